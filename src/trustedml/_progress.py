"""The Progress protocol long operations report through (the CLI renders it with rich)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """How long operations report progress; the CLI renders it with rich.

    The library calls ``start`` once per item, ``advance`` with byte counts, and
    ``finish`` when the item is done (or failed).
    """

    def start(self, description: str, total: int | None) -> None: ...

    def advance(self, amount: int) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def finish(self) -> None:
        pass
