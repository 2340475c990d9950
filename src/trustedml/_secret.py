"""Secret: a value that never prints, pickles or logs itself."""

from __future__ import annotations

import hmac
from typing import NoReturn

__all__ = ["Secret"]


class Secret:
    """A secret value that refuses to show itself.

    ``repr``/``str`` print a placeholder, pickling is refused and equality is
    constant-time. Call :meth:`reveal` (bytes) or :meth:`reveal_text` (str) at the
    one place that must hand the value to something else.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes | str) -> None:
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, bytes | bytearray):
            raise TypeError(f"Secret takes bytes or str, got {type(value).__name__}")
        self._value = bytes(value)

    def reveal(self) -> bytes:
        """Return the secret bytes."""
        return self._value

    def reveal_text(self) -> str:
        """Return the secret as UTF-8 text."""
        return self._value.decode("utf-8")

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled")
