"""The commands a Spark-on-Kubernetes pod runs, built from what Spark gives the pod.

Spark's driver and executor pods call the image's entrypoint with ``driver ARGS`` or
``executor`` and describe the rest in ``SPARK_*`` environment variables (Spark's own
image does the same in its ``entrypoint.sh``). This module turns them into argv lists,
without a shell; nothing here reads a secret: passwords reach the JVM as environment
variables from Secrets, the authentication secret as a mounted file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from trustedml.errors import ConfigError

__all__ = [
    "EXECUTOR_CLASS",
    "EXECUTOR_ENV",
    "PYTHON_RUNNER",
    "DriverArgs",
    "driver_command",
    "executor_command",
    "java_options",
    "local_path",
    "parse_driver_args",
    "require",
]

EXECUTOR_CLASS = "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend"
PYTHON_RUNNER = "org.apache.spark.deploy.PythonRunner"
# What Spark's executor pod feature step sets, and the executor backend's flag for each.
EXECUTOR_ENV = (
    ("SPARK_DRIVER_URL", "--driver-url"),
    ("SPARK_EXECUTOR_ID", "--executor-id"),
    ("SPARK_EXECUTOR_CORES", "--cores"),
    ("SPARK_APPLICATION_ID", "--app-id"),
    ("SPARK_EXECUTOR_POD_IP", "--hostname"),
    ("SPARK_RESOURCE_PROFILE_ID", "--resourceProfileId"),
    ("SPARK_EXECUTOR_POD_NAME", "--podName"),
)
_JAVA_OPT = re.compile(r"^SPARK_JAVA_OPT_([0-9]+)$")
_MEMORY = re.compile(r"^[1-9][0-9]*[kKmMgGtT]?$")
# The options Spark's driver command feature step passes before the main resource.
_DRIVER_OPTIONS = ("--properties-file", "--class", "--proxy-user")


def require(env: Mapping[str, str], name: str, why: str) -> str:
    """``env[name]``, or :class:`ConfigError` naming the variable and who sets it."""
    value = env.get(name, "")
    if not value:
        raise ConfigError(f"{name} is not set: {why}")
    return value


def java_options(env: Mapping[str, str]) -> list[str]:
    """The executor JVM's options Spark passes as ``SPARK_JAVA_OPT_0..n``, in numeric
    order (``-Dspark.*`` properties the executor needs before it reaches the driver)."""
    found = []
    for name, value in env.items():
        match = _JAVA_OPT.fullmatch(name)
        if match:
            found.append((int(match.group(1)), value))
    return [value for _, value in sorted(found)]


def _classpath(env: Mapping[str, str], spark_home: Path) -> str:
    # The order of Spark's image: the conf directory, Hadoop's, the user's class path
    # (spark.executor.extraClassPath arrives as SPARK_CLASSPATH), Spark's jars, then
    # SPARK_EXTRA_CLASSPATH and SPARK_DIST_CLASSPATH.
    parts = [env.get("SPARK_CONF_DIR") or f"{spark_home}/conf", env.get("HADOOP_CONF_DIR", "")]
    parts += [env.get("SPARK_CLASSPATH", ""), f"{spark_home}/jars/*"]
    parts += [env.get("SPARK_EXTRA_CLASSPATH", ""), env.get("SPARK_DIST_CLASSPATH", "")]
    return ":".join(p for p in parts if p)


def executor_command(env: Mapping[str, str], java: Path, spark_home: Path) -> list[str]:
    """The executor JVM (Spark's ``KubernetesExecutorBackend``) as Spark's own image
    starts it, from the pod's ``SPARK_*`` variables; :class:`ConfigError` naming the
    first one missing."""
    why = "Spark's executor pod sets it (start executors through spark-submit, not by hand)"
    flags = []
    for name, flag in EXECUTOR_ENV:
        flags += [flag, require(env, name, why)]
    memory = require(env, "SPARK_EXECUTOR_MEMORY", why)
    if not _MEMORY.fullmatch(memory):
        raise ConfigError(f"SPARK_EXECUTOR_MEMORY: expected a JVM size like 1g, got {memory!r}")
    return [
        str(java),
        *java_options(env),
        f"-Xms{memory}",
        f"-Xmx{memory}",
        "-cp",
        _classpath(env, spark_home),
        EXECUTOR_CLASS,
        *flags,
    ]


@dataclass(frozen=True)
class DriverArgs:
    """What Spark passes a driver pod after ``driver``: its properties file, main class,
    main resource (``local:///...``), the application's arguments, and a proxy user."""

    properties_file: Path
    main_class: str
    resource: str
    app_args: tuple[str, ...]
    proxy_user: str | None = None


def parse_driver_args(args: Sequence[str]) -> DriverArgs:
    """Parse ``--properties-file F --class C [--proxy-user U] RESOURCE [ARGS...]``;
    :class:`ConfigError` for anything else (a trusted driver runs what it measured)."""
    options: dict[str, str] = {}
    rest = list(args)
    while rest and rest[0].startswith("--"):
        flag = rest.pop(0)
        if flag not in _DRIVER_OPTIONS:
            raise ConfigError(
                f"driver: unexpected option {flag!r} (expected {', '.join(_DRIVER_OPTIONS)})"
            )
        if not rest:
            raise ConfigError(f"driver: {flag} needs a value")
        options[flag] = rest.pop(0)
    for flag in ("--properties-file", "--class"):
        if flag not in options:
            raise ConfigError(f"driver: {flag} is missing (Spark's driver pod passes it)")
    if not rest:
        raise ConfigError("driver: the application (local:///...) is missing")
    if options["--class"] != PYTHON_RUNNER:
        raise ConfigError(
            f"driver: expected a Python application ({PYTHON_RUNNER}), "
            f"got main class {options['--class']!r}"
        )
    return DriverArgs(
        properties_file=Path(options["--properties-file"]),
        main_class=options["--class"],
        resource=rest[0],
        app_args=tuple(rest[1:]),
        proxy_user=options.get("--proxy-user"),
    )


def local_path(uri: str) -> Path:
    """The in-pod path of ``local:///p``, ``file:///p`` or ``/p``; :class:`ConfigError`
    for a remote URI (a trusted driver measures files it has, it downloads nothing)."""
    parts = urlsplit(uri)
    if parts.scheme in ("local", "file") and not parts.netloc:
        path = parts.path
    elif not parts.scheme:
        path = uri
    else:
        raise ConfigError(f"{uri}: expected a file in the image or the pod (local:///...)")
    if not PurePosixPath(path).is_absolute():
        raise ConfigError(f"{uri}: expected an absolute path")
    return Path(path)


def driver_command(
    spark_home: Path,
    bind_address: str,
    args: DriverArgs,
    *,
    properties_file: Path,
    app: Path,
    py_files: Sequence[Path] = (),
) -> list[str]:
    """``spark-submit`` in client mode inside the driver pod, as Spark's own image runs
    it (bound to the pod's address), on the measured copies of the properties file,
    the application and its py-files."""
    argv = [
        str(spark_home / "bin" / "spark-submit"),
        "--conf",
        f"spark.driver.bindAddress={bind_address}",
        "--deploy-mode",
        "client",
    ]
    if args.proxy_user is not None:
        argv += ["--proxy-user", args.proxy_user]
    argv += ["--properties-file", str(properties_file), "--class", args.main_class]
    if py_files:
        argv += ["--py-files", ",".join(str(p) for p in py_files)]
    return [*argv, str(app), *args.app_args]
