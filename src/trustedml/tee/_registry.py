"""The TEE backends by name: the one table `--tee` and get_backend() read."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType

from trustedml.errors import ConfigError
from trustedml.tee._backend import NoTee, TeeBackend
from trustedml.tee._cvm import CvmBackend
from trustedml.tee._gramine import GramineBackend
from trustedml.tee._sim import SimBackend

__all__ = ["BACKENDS", "BACKEND_NAMES", "get_backend"]

# A new backend is one class following TeeBackend, with a class attribute ``name``,
# added here; the CLI's --tee choices and get_backend() follow.
BACKENDS: Mapping[str, Callable[..., TeeBackend]] = MappingProxyType(
    {cls.name: cls for cls in (NoTee, SimBackend, GramineBackend, CvmBackend)}
)
BACKEND_NAMES = tuple(sorted(BACKENDS))


def get_backend(name: str, **options: object) -> TeeBackend:
    """Return the backend called ``name`` ("none", "sim", "gramine", "cvm"), built
    with ``options`` (see :class:`SimBackend`, :class:`GramineBackend`,
    :class:`CvmBackend`)."""
    factory = BACKENDS.get(name)
    if factory is None:
        raise ConfigError(f"--tee: expected one of {', '.join(BACKEND_NAMES)}, got {name!r}")
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"--tee {name}: {exc}") from None
    return factory(**options)
