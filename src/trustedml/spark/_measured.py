"""Which Spark properties enter the job measurement, and the keyless configuration
that `trustedml measure` measures ahead of time (docs/measurement.md)."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from trustedml._secret import Secret
from trustedml.errors import ConfigError
from trustedml.spark._config import (
    REDACTION_REGEX,
    PlainSparkConfig,
    SecureSparkConfig,
    SparkSettings,
    mode_for_master,
)

__all__ = ["MACHINE_LOCAL_KEYS", "measured_conf", "measurement_settings"]

# Spark properties whose values trusted-ml derives from this machine (interpreter,
# key directory, scratch space): left out so that the digest is the same on every
# machine given the same choices. What they stand for is measured elsewhere (the
# Python version; secure mode shows in every other spark.* security property).
MACHINE_LOCAL_KEYS = frozenset(
    {
        "spark.pyspark.python",
        "spark.pyspark.driver.python",
        "spark.executorEnv.PYSPARK_PYTHON",
        "spark.ssl.keyStore",
        "spark.ssl.trustStore",
        "spark.local.dir",
    }
)
# A driver on a spark:// master binds the address this machine reaches the master from
# (--driver-host): machine-local there. In local mode it is always 127.0.0.1 and stays
# measured, as it always was.
_DRIVER_ADDRESS_KEYS = frozenset(
    {"spark.driver.host", "spark.driver.bindAddress", "spark.executorEnv.SPARK_LOCAL_IP"}
)
# The Parquet KMS client and tml file system jars are compiled per machine into a
# cache; their sources are part of trusted-ml, whose files are measured.
_KMS_JAR = re.compile(r"^trustedml-(parquet-kms|fs)-.*\.jar$")
_SECRET_LOOKING = re.compile(REDACTION_REGEX)


def measured_conf(conf: Mapping[str, str]) -> dict[str, str]:
    """The Spark properties that enter the measurement: all of ``conf`` except
    machine-local paths, the driver's address on a ``spark://`` master, and keys that
    look secret (whose values are ``${env:...}`` references, never secrets, but are
    left out as a matter of principle)."""
    out: dict[str, str] = {}
    standalone = conf.get("spark.master", "").startswith("spark://")
    for key, value in conf.items():
        if key in MACHINE_LOCAL_KEYS or _SECRET_LOOKING.search(key):
            continue
        if standalone and key in _DRIVER_ADDRESS_KEYS:
            continue
        if key == "spark.jars":
            jars = [
                j for j in value.split(",") if j and not _KMS_JAR.fullmatch(PurePosixPath(j).name)
            ]
            if not jars:
                continue
            value = ",".join(jars)
        out[key] = value
    return out


def measurement_settings(
    *,
    secure: bool = True,
    master: str = "local[2]",
    rpc_tls: bool = False,
    log_level: str = "WARN",
    ui: bool = True,
    extra: Mapping[str, str] | None = None,
    with_keys: bool = False,
    allow_insecure: Iterable[str] = (),
) -> SparkSettings:
    """A Spark configuration built from the same choices as a real one, without a key
    directory, for measuring a job ahead of time (``trustedml measure``).

    It is never launched: its key material is throwaway placeholders, and exactly the
    properties that differ from the real configuration's are left out of the
    measurement (:data:`MACHINE_LOCAL_KEYS`, the KMS client jar). ``with_keys`` stands
    for ``--kek``: the job gets keys, which turns on Parquet encryption.
    ``allow_insecure`` stands for ``--allow-insecure-conf`` (secure mode only).
    """
    common: dict[str, Any] = {
        "master": master,
        "python": sys.executable,
        "log_level": log_level,
        "ui": ui,
        "extra": dict(extra or {}),
        # Only the file name matters (measured_conf drops it); nothing is compiled.
        "pme_jar": Path("trustedml-parquet-kms-placeholder.jar") if with_keys else None,
        "fs_jar": Path("trustedml-fs-placeholder.jar"),
    }
    allowed = frozenset(allow_insecure)
    if not secure:
        if rpc_tls:
            raise ConfigError("--rpc-tls and --insecure contradict each other")
        if allowed:
            raise ConfigError(
                "--allow-insecure-conf is for secure jobs: --insecure lets every --conf through"
            )
        return PlainSparkConfig(**common)
    with tempfile.TemporaryDirectory(prefix="trustedml-measure-") as tmp:
        placeholder = Path(tmp) / "placeholder.p12"
        placeholder.write_bytes(b"")
        throwaway = Secret(os.urandom(32))
        return SecureSparkConfig(
            **common,
            mode=mode_for_master(master),
            keystore=placeholder,
            truststore=placeholder,
            auth_secret=throwaway,
            keystore_password=throwaway,
            truststore_password=throwaway,
            rpc_tls=rpc_tls,
            allow_insecure=allowed,
        )
