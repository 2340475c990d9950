"""What the daemons of a cluster are started with (ClusterOptions), checked when made."""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from trustedml.errors import ConfigError
from trustedml.spark import check_secure_conf
from trustedml.tee import NoTee, TeeBackend

__all__ = [
    "DAEMON_BACKENDS",
    "MASTER_PORT",
    "ClusterOptions",
    "check_daemon_backend",
    "check_memory",
    "check_port",
]

MASTER_PORT = 7077
MASTER_WEBUI_PORT = 8080
# Backends that can launch a long-running daemon: gramine's manifest describes one
# spark-submit job, not a daemon that forks executors for other people's jobs.
DAEMON_BACKENDS = ("none", "sim", "cvm")
_LOG_LEVELS = ("ALL", "TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_MEMORY = re.compile(r"^[1-9][0-9]*[mMgG]$")
# Variables the launcher decides: a test's extra environment may not override them.
_RESERVED_ENV = re.compile(r"^(SPARK_|_SPARK_|TRUSTEDML_|PYSPARK_)")


def check_host(host: str) -> str:
    """``host`` as an address to bind: a concrete IP address or host name, never a
    wildcard (0.0.0.0 would expose every daemon on every interface)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise ConfigError(
                f"--host: expected an IP address or host name, got {host!r}"
            ) from None
        return host
    if address.is_unspecified:
        raise ConfigError(
            f"--host {host}: a wildcard address listens on every interface; "
            "give the address the other hosts reach this one at"
        )
    return str(address)


def check_daemon_backend(name: str) -> str:
    """``name`` if that TEE backend can run a cluster daemon, else a ConfigError why not."""
    if name not in DAEMON_BACKENDS:
        raise ConfigError(
            f"--tee {name}: cannot run a cluster daemon yet (its enclave manifest "
            "describes one spark-submit job, not a daemon that starts executors); "
            f"choose one of {', '.join(DAEMON_BACKENDS)}"
        )
    return name


def check_port(name: str, port: int) -> int:
    """A TCP port, or 0 for a free one chosen at start."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"{name}: expected a port 0-65535 (0: any free port), got {port!r}")
    return port


def check_memory(memory: str) -> str:
    """Worker memory as Spark spells it: a number then m or g (512m, 2g)."""
    if not isinstance(memory, str) or not _MEMORY.fullmatch(memory):
        raise ConfigError(f"--memory: expected a size like 512m or 2g, got {memory!r}")
    return memory.lower()


@dataclass(frozen=True)
class ClusterOptions:
    """How this host's daemons start: the address they bind (``host``), the TEE
    backend they run in (None: the host, unmeasured), the secure configuration or a
    plain one (``secure=False``, for baselines), the log level, the Python interpreter
    executors run, extra environment for the JVMs (``extra_env``, e.g. JVM tuning in
    tests; never Spark's or trusted-ml's own variables) and extra Spark properties for
    the daemons (``extra_conf``; a secure cluster takes only the allow-listed ones).
    Holds no secret."""

    host: str = "127.0.0.1"
    tee: TeeBackend | None = None
    secure: bool = True
    log_level: str = "WARN"
    python: str = field(default_factory=lambda: sys.executable)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    extra_conf: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", check_host(self.host))
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(
                f"--log-level: expected one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}"
            )
        object.__setattr__(self, "log_level", self.log_level.upper())
        if not self.python:
            raise ConfigError("python: expected an interpreter path, got ''")
        check_daemon_backend(self.backend.name)
        for key, value in self.extra_env.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key:
                raise ConfigError(f"extra_env: expected strings, got {key!r}={value!r}")
            if _RESERVED_ENV.match(key):
                raise ConfigError(f"extra_env: {key} is set by the launcher, not by options")
        object.__setattr__(self, "extra_env", MappingProxyType(dict(self.extra_env)))
        object.__setattr__(self, "extra_conf", MappingProxyType(dict(self.extra_conf)))
        if self.secure:
            check_secure_conf(self.extra_conf)

    @property
    def backend(self) -> TeeBackend:
        """The TEE backend (NoTee when none was chosen)."""
        return self.tee if self.tee is not None else NoTee()

    def __repr__(self) -> str:
        return (
            f"ClusterOptions(host={self.host!r}, tee={self.backend.name!r}, "
            f"secure={self.secure}, log_level={self.log_level!r})"
        )
