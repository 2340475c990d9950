"""The key broker's errors: the client-side tree lives in :mod:`trustedml.errors`;
:class:`Refusal` is the service's answer to a request it turns down."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The client (broker/_client.py) takes these from here.
from trustedml.errors import (
    BrokerKeyNotFoundError,
    BrokerRefusedError,
    BrokerUnavailableError,
    KeyBrokerError,
)


class Refusal(KeyBrokerError):
    """A request the broker turns down: HTTP ``status``, an error ``code`` from
    docs/broker-protocol.md, a message, and every reason. The message and reasons go to
    the client and the audit log, so they name fields, keys and checks, never a secret."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        reasons: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reasons = tuple(reasons)
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": self.code, "message": self.message, "reasons": list(self.reasons)}


__all__ = [
    "BrokerKeyNotFoundError",
    "BrokerRefusedError",
    "BrokerUnavailableError",
    "KeyBrokerError",
    "Refusal",
]
