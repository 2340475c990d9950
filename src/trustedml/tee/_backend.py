from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from trustedml.errors import ConfigError


@runtime_checkable
class TeeBackend(Protocol):
    """A trusted execution environment that can launch a command."""

    @property
    def name(self) -> str: ...

    @property
    def hardware_protected(self) -> bool:
        """True only when memory is protected by a hardware TEE."""
        ...

    def wrap(self, argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
        """Return the argv that runs ``argv`` inside this backend."""
        ...


class NoTee:
    """Run the job directly on the host: no TEE, no attestation."""

    name = "none"
    hardware_protected = False

    def wrap(self, argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
        return list(argv)


_BACKENDS: dict[str, type[NoTee]] = {"none": NoTee}


def get_backend(name: str) -> TeeBackend:
    """Return the backend called ``name``."""
    try:
        return _BACKENDS[name]()
    except KeyError:
        raise ConfigError(
            f"--tee: expected one of {', '.join(sorted(_BACKENDS))}, got {name!r}"
        ) from None
