"""The key broker's errors live in :mod:`trustedml.errors` with the rest of the tree."""

from trustedml.errors import (
    AuditLogError,
    BrokerKeyNotFoundError,
    BrokerRefusedError,
    BrokerUnavailableError,
    KeyBrokerError,
)

__all__ = [
    "AuditLogError",
    "BrokerKeyNotFoundError",
    "BrokerRefusedError",
    "BrokerUnavailableError",
    "KeyBrokerError",
]
