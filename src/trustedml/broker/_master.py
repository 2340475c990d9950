"""The broker's master key and the keys derived from it."""

from __future__ import annotations

import hmac
import secrets
from typing import NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from trustedml._secret import Secret
from trustedml.errors import ConfigError

MASTER_KEY_SIZE = 32
# Entries of the key directory's sealed vault (docs/keys.md, docs/broker-protocol.md).
# Names of entries, not values.
MASTER_KEY_SECRET = "broker_master_key"  # noqa: S105
ADMIN_TOKEN_SECRET = "broker_admin_token"  # noqa: S105

# The keys derived from the master key: attribute name -> HKDF info.
_DERIVED = {
    "kek_wrapping_key": b"trustedml/broker/kek-wrap/v1",
    "audit_key": b"trustedml/broker/audit-key/v1",
    "row_key": b"trustedml/broker/row-mac/v1",
    "seal_key": b"trustedml/broker/seal/v1",
}
_CHECK_INFO = b"trustedml/broker/master-check/v1"


def _derive(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


class MasterKey:
    """32 random bytes sealed in the key directory; everything else derives from it.

    * ``kek_wrapping_key`` wraps the key-encryption keys stored in the database;
    * ``audit_key`` keys the audit log's MAC chain;
    * ``row_key`` keys the MACs of the key rows (docs/broker-protocol.md, "Integrity");
    * ``seal_key`` keys the store seal kept in the database and in its head file;
    * ``check_value`` is stored in the database to recognise the right master key.
    """

    __slots__ = ("_check", *_DERIVED)

    kek_wrapping_key: bytes
    audit_key: bytes
    row_key: bytes
    seal_key: bytes
    _check: bytes

    def __init__(self, key: Secret) -> None:
        raw = key.reveal()
        if len(raw) != MASTER_KEY_SIZE:
            raise ConfigError(
                f"broker master key: expected {MASTER_KEY_SIZE} bytes, got {len(raw)}"
            )
        for name, info in _DERIVED.items():
            object.__setattr__(self, name, _derive(raw, info))
        object.__setattr__(self, "_check", _derive(raw, _CHECK_INFO))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"MasterKey.{name} is read-only")

    @classmethod
    def generate(cls) -> Secret:
        return Secret(secrets.token_bytes(MASTER_KEY_SIZE))

    def __repr__(self) -> str:
        return "MasterKey('***')"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a MasterKey cannot be pickled")

    @property
    def check_value(self) -> str:
        """Hex of HKDF(master, "trustedml/broker/master-check/v1"): safe to store."""
        return self._check.hex()

    def matches(self, check_value: str) -> bool:
        return hmac.compare_digest(self.check_value.encode(), check_value.encode())


def kek_aad_name(key_id: str, version: int) -> str:
    """The key id bound into a stored KEK's wrap: ``"kek:<id>@v<version>"``."""
    return f"kek:{key_id}@v{version}"
