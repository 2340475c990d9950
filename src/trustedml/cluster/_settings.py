"""What one daemon runs with: its Spark settings, measurement and the TEE backend's plan."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from trustedml._secret import Secret
from trustedml.cluster._options import ClusterOptions
from trustedml.cluster._state import ClusterDir
from trustedml.errors import ConfigError
from trustedml.keys import KeyDirectory
from trustedml.spark import (
    DeployMode,
    PlainSparkConfig,
    SecureSparkConfig,
    SparkSettings,
    child_environment,
    spark_home,
    write_conf_dir,
)
from trustedml.tee import Job, LaunchPlan, java_binary, measure_daemon

__all__ = ["DaemonLaunch", "daemon_launch", "daemon_settings", "write_daemon_conf"]

# The daemons log at the chosen level, but a worker's registration and its executors'
# comings and goings are what an operator (and the readiness check) look for.
_LOG4J2_DAEMONS = """\
logger.worker.name = org.apache.spark.deploy.worker.Worker
logger.worker.level = info
logger.master.name = org.apache.spark.deploy.master.Master
logger.master.level = info
"""
_INHERITED_SPARK = ("SPARK_", "_SPARK_", "PYSPARK_")
_JVM_OPTION_VARIABLES = ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS")
# Which variable each daemon class takes its JVM options from (bin/spark-class).
_OPTS_VARIABLE = {"master": "SPARK_MASTER_OPTS", "worker": "SPARK_WORKER_OPTS"}


@dataclass(frozen=True)
class DaemonLaunch:
    """A daemon ready to start: its id, settings, the backend's plan (argv and
    environment, secrets included), its measurement (hex) and the cluster secret
    (None for a plain cluster)."""

    daemon_id: str
    role: str
    settings: SparkSettings = field(repr=False)
    plan: LaunchPlan = field(repr=False)
    measurement: str | None
    secret: Secret | None = field(repr=False)


def daemon_settings(
    options: ClusterOptions,
    master_url: str,
    keys: KeyDirectory | None,
    passphrase: Secret | None,
) -> SparkSettings:
    """The Spark settings of this host's daemons for the cluster at ``master_url``:
    the secure standalone configuration with the cluster's own secret, or a plain one."""
    common: dict[str, Any] = {
        "master": master_url,
        "python": options.python,
        "local_ip": options.host,
        "log_level": options.log_level,
        "extra": dict(options.extra_conf),
    }
    if not options.secure:
        return PlainSparkConfig(**common)
    if keys is None or passphrase is None:
        raise ConfigError(
            "a secure cluster needs a key directory and its passphrase (--keys DIR and "
            "--passphrase-file/--prompt), or --insecure for a plain cluster"
        )
    return SecureSparkConfig.from_key_directory(
        keys, passphrase, mode=DeployMode.STANDALONE, **common
    )


def write_daemon_conf(directory: ClusterDir, launch: DaemonLaunch) -> None:
    """Write conf/spark.properties (no secret values) and conf/log4j2.properties."""
    write_conf_dir(launch.settings, directory.conf_dir)
    log4j = directory.conf_dir / "log4j2.properties"
    with open(log4j, "a", encoding="utf-8") as fh:
        fh.write(_LOG4J2_DAEMONS)


def daemon_launch(
    directory: ClusterDir,
    options: ClusterOptions,
    role: str,
    daemon_id: str,
    master_url: str,
    *,
    keys: KeyDirectory | None,
    passphrase: Secret | None,
    argv_tail: Sequence[str],
    ssl_port: int | None,
    cls: str,
    measured_options: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    master_arg: str | None = None,
) -> DaemonLaunch:
    """Build the daemon ``daemon_id`` (``role``): settings, environment, measurement
    (when the backend measures) and the backend's launch plan."""
    settings = daemon_settings(options, master_url, keys, passphrase)
    # An inherited SPARK_*_OPTS or _SPARK_* could turn a protection off (a -D property
    # wins over the properties file): the daemons get only what is set here.
    base = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_SPARK)}
    env = child_environment(settings, base)
    env.update(options.extra_env)
    for name in _JVM_OPTION_VARIABLES:
        if "-Dspark." in env.get(name, ""):
            # The JVM reads these itself; a spark.* system property overrides the file.
            raise ConfigError(
                f"{name} sets a Spark property (-Dspark.*): the daemons take their "
                "properties from the cluster's configuration only"
            )
    env["SPARK_CONF_DIR"] = str(directory.conf_dir)
    if ssl_port is not None:
        # The HTTPS port of this daemon's web UI (the http port only redirects to it).
        env[_OPTS_VARIABLE[role]] = f"-Dspark.ssl.standalone.port={ssl_port}"
    argv = [
        str(spark_home() / "bin" / "spark-class"),
        cls,
        *argv_tail,
        "--properties-file",
        str(directory.conf_file),
    ]
    if master_arg is not None:
        argv.append(master_arg)
    backend = options.backend
    measurement = None
    if backend.measures:
        measurement = measure_daemon(
            role, settings, options=dict(measured_options or {}), java=java_binary(env)
        )
    job = Job(
        launcher=f"cluster-{role}",
        argv=tuple(argv),
        env=env,
        settings=settings,
        conf_dir=directory.conf_dir,
        app=None,
        measurement=measurement,
        cwd=directory.path,
    )
    plan = backend.prepare(job)
    if extra_env:
        plan = replace(plan, env={**plan.env, **extra_env})
    secret = settings.auth_secret if isinstance(settings, SecureSparkConfig) else None
    return DaemonLaunch(
        daemon_id=daemon_id,
        role=role,
        settings=settings,
        plan=plan,
        measurement=measurement.hex if measurement is not None else None,
        secret=secret,
    )
