"""The key broker: attestation-gated release of data keys, with an audit log.

A broker keeps key-encryption keys (KEKs), each wrapped by its master key, in an
embedded database, and releases data keys only to a client whose evidence verifies
and satisfies the key's policy. Every decision is appended to a MAC-chained audit
log. The protocol is specified in docs/broker-protocol.md.
"""

from trustedml.broker._admin_client import BrokerAdminClient
from trustedml.broker._app import create_app
from trustedml.broker._audit import AuditEntry, AuditHead, AuditVerification
from trustedml.broker._check import parse_expected_head
from trustedml.broker._client import (
    AttestationResult,
    BrokerSession,
    KeyBrokerClient,
    client_ssl_context,
)
from trustedml.broker._config import BrokerConfig, broker_secrets, read_trusted_sim_keys
from trustedml.broker._master import ADMIN_TOKEN_SECRET, MASTER_KEY_SECRET, MasterKey
from trustedml.broker._server import BrokerServer, build_ssl_context, configure_logging, serve
from trustedml.broker._store import BrokerStore, SQLiteStore, open_store
from trustedml.broker._verify import migrate_store, verify_audit_log, verify_store
from trustedml.errors import (
    AuditLogError,
    BrokerKeyNotFoundError,
    BrokerRefusedError,
    BrokerUnavailableError,
    KeyBrokerError,
)

__all__ = [
    "ADMIN_TOKEN_SECRET",
    "MASTER_KEY_SECRET",
    "AttestationResult",
    "AuditEntry",
    "AuditHead",
    "AuditLogError",
    "AuditVerification",
    "BrokerAdminClient",
    "BrokerConfig",
    "BrokerKeyNotFoundError",
    "BrokerRefusedError",
    "BrokerServer",
    "BrokerSession",
    "BrokerStore",
    "BrokerUnavailableError",
    "KeyBrokerClient",
    "KeyBrokerError",
    "MasterKey",
    "SQLiteStore",
    "broker_secrets",
    "build_ssl_context",
    "client_ssl_context",
    "configure_logging",
    "create_app",
    "migrate_store",
    "open_store",
    "parse_expected_head",
    "read_trusted_sim_keys",
    "serve",
    "verify_audit_log",
    "verify_store",
]
