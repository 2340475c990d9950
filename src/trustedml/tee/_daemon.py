"""The measurement of a standalone cluster daemon (a Spark master or worker)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trustedml._version import __version__
from trustedml.errors import ConfigError
from trustedml.tee._measure import (
    FORMAT_VERSION,
    JobMeasurement,
    _java_part,
    _lock,
    _python_part,
    java_binary,
)
from trustedml.tee._settings import JobSettings

__all__ = ["DAEMON_LAUNCHERS", "DAEMON_LOCAL_KEYS", "measure_daemon"]

# The launcher name each daemon role is measured under.
DAEMON_LAUNCHERS = {"master": "cluster-master", "worker": "cluster-worker"}
# Measured properties whose values name this host or the master's address: left out so
# that every worker started with the same choices has the same measurement wherever
# it runs (a key policy allows one digest, not one per host).
DAEMON_LOCAL_KEYS = frozenset(
    {
        "spark.master",
        "spark.driver.host",
        "spark.driver.bindAddress",
        "spark.executorEnv.SPARK_LOCAL_IP",
    }
)


def measure_daemon(
    role: str,
    settings: JobSettings,
    *,
    options: Mapping[str, str],
    java: Path | None = None,
) -> JobMeasurement:
    """Measure a cluster daemon about to start: ``role`` ("master" or "worker"), the
    measured Spark properties of ``settings`` (less host and address ones),
    ``options`` (what the daemon offers, e.g. cores and memory; not its host or
    ports), the Python and Java versions, and the files of trusted-ml and pyspark
    (whose jars the daemon runs). ``java`` defaults to the one Spark would run."""
    launcher = DAEMON_LAUNCHERS.get(role)
    if launcher is None:
        raise ConfigError(f"daemon role: expected master or worker, got {role!r}")
    for key, value in options.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"daemon options: expected strings, got {key!r}={value!r}")
    conf = {k: v for k, v in settings.measured_conf().items() if k not in DAEMON_LOCAL_KEYS}
    # pyspark as an import: its distribution (and the jars the JVM loads) is locked.
    packages, _, trusted = _lock({"pyspark"}, set(), launcher)
    parts: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "launcher": launcher,
        "role": role,
        "options": dict(options),
        "spark_conf": conf,
        "trustedml": __version__,
        "python": _python_part(),
        "java": _java_part(java if java is not None else java_binary()),
        "packages": packages,
    }
    insecure = settings.insecure_conf()
    if insecure:
        parts["insecure_conf"] = dict(insecure)
    return JobMeasurement.from_parts(parts, trusted)
