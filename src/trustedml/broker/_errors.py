"""Errors of the key broker (to move into trustedml.errors with the rest of the tree)."""

from __future__ import annotations

from collections.abc import Sequence

from trustedml.errors import IntegrityError, KeyNotFoundError, KeyStoreError


class KeyBrokerError(KeyStoreError):
    """The key broker, its store or its client failed."""


class BrokerRefusedError(KeyBrokerError):
    """The broker refused a request; ``status`` is the HTTP status, ``code`` the error
    code of docs/broker-protocol.md and ``reasons`` every reason it gave."""

    def __init__(
        self, message: str, *, status: int, code: str, reasons: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.reasons = tuple(reasons)


class BrokerKeyNotFoundError(BrokerRefusedError, KeyNotFoundError):
    """The broker has no key (or key version) with the requested id (HTTP 404)."""


class BrokerUnavailableError(KeyBrokerError):
    """The broker could not be reached, or failed in a way that is not a refusal."""


class AuditLogError(KeyBrokerError, IntegrityError):
    """The audit log does not verify: an entry was edited, deleted or reordered.

    ``seq`` names the first row that fails (None when the log as a whole is wrong)."""

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq
