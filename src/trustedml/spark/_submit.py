"""Launch PySpark applications and native Python under a Spark configuration."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from trustedml._fs import write_private
from trustedml.errors import ConfigError, LaunchError
from trustedml.spark._config import SparkSettings, properties_text
from trustedml.tee import NoTee, TeeBackend

# Inherited variables that would silently change what the child runs.
_SCRUBBED = ("PYSPARK_SUBMIT_ARGS", "SPARK_CONF_DIR", "_SPARK_AUTH_SECRET", "SPARK_HOME")


def spark_home() -> Path:
    """The Spark distribution shipped inside the pyspark package."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise LaunchError("pyspark is not installed: install trusted-ml[spark]")
    home = Path(spec.origin).parent
    if not (home / "bin" / "spark-submit").is_file():
        raise LaunchError(f"pyspark at {home} has no bin/spark-submit")
    return home


def _check_java(env: Mapping[str, str]) -> None:
    java_home = env.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return
    if shutil.which("java", path=env.get("PATH")) is None:
        raise LaunchError("Java not found: Spark needs Java 17 or newer on PATH or JAVA_HOME")


def child_environment(
    settings: SparkSettings, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a Spark child process: the caller's, minus variables that
    would redirect Spark, plus what ``settings`` needs (secrets included)."""
    env = dict(os.environ if base is None else base)
    for name in _SCRUBBED:
        env.pop(name, None)
    env["SPARK_HOME"] = str(spark_home())
    # `python` in the child resolves to the interpreter the job is configured with.
    interp_dir = str(Path(settings.conf()["spark.pyspark.python"]).parent)
    env["PATH"] = interp_dir + os.pathsep + env.get("PATH", "")
    env.update(settings.environment())
    return env


_LOG4J2 = """\
# written by trusted-ml
rootLogger.level = {level}
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
logger.jetty.name = org.sparkproject.jetty
logger.jetty.level = warn
logger.hadoopnative.name = org.apache.hadoop.util.NativeCodeLoader
logger.hadoopnative.level = error
"""


@contextmanager
def conf_dir(settings: SparkSettings) -> Iterator[Path]:
    """A private temporary SPARK_CONF_DIR: the (non-secret) properties and a log4j2
    configuration at the chosen level, so that even start-up lines obey it."""
    with tempfile.TemporaryDirectory(prefix="trustedml-") as tmp:
        write_conf_dir(settings, Path(tmp))
        yield Path(tmp)


def write_conf_dir(settings: SparkSettings, directory: Path) -> Path:
    """Write ``spark.properties`` and ``log4j2.properties`` into ``directory``."""
    conf = settings.conf()
    level = conf.get("spark.log.level", "WARN").lower()
    write_private(directory / "log4j2.properties", _LOG4J2.format(level=level).encode())
    write_private(directory / "spark.properties", properties_text(conf).encode("utf-8"))
    return directory / "spark.properties"


def submit_argv(
    app: Path, args: Sequence[str], props: Path, py_files: Sequence[Path] = ()
) -> list[str]:
    argv = [str(spark_home() / "bin" / "spark-submit"), "--properties-file", str(props)]
    if py_files:
        argv += ["--py-files", ",".join(str(p) for p in py_files)]
    return [*argv, str(app), *args]


def _run_child(
    argv: list[str],
    env: dict[str, str],
    cwd: Path | None,
    stdout: IO[Any] | None,
    stderr: IO[Any] | None,
) -> int:
    _check_java(env)
    try:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=stdout, stderr=stderr)
    except OSError as exc:
        raise LaunchError(f"cannot start {argv[0]}: {exc.strerror}") from exc
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    # Shell convention: death by signal N is exit status 128+N.
    return 128 - code if code < 0 else code


def _check_files(app: Path, py_files: Sequence[Path]) -> None:
    for path in (app, *py_files):
        if not path.is_file():
            raise ConfigError(f"{path}: expected an existing file")


def submit(
    app: str | os.PathLike[str],
    args: Sequence[str] = (),
    *,
    settings: SparkSettings,
    py_files: Sequence[str | os.PathLike[str]] = (),
    tee: TeeBackend | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdout: IO[Any] | None = None,
    stderr: IO[Any] | None = None,
) -> int:
    """Run a PySpark application with ``spark-submit`` under ``settings``.

    The driver's output goes to ``stdout``/``stderr`` (open files; default: this
    process's). Secrets reach Spark only through the child's environment. Returns
    the application's exit code.
    """
    app_path = Path(app).resolve()
    files = [Path(p).resolve() for p in py_files]
    _check_files(app_path, files)
    backend = tee or NoTee()
    env = child_environment(settings)
    with conf_dir(settings) as confs:
        env["SPARK_CONF_DIR"] = str(confs)
        props = confs / "spark.properties"
        argv = backend.wrap(submit_argv(app_path, args, props, files), env)
        return _run_child(argv, env, Path(cwd) if cwd else None, stdout, stderr)


def run(
    command: Sequence[str],
    *,
    settings: SparkSettings,
    tee: TeeBackend | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdout: IO[Any] | None = None,
    stderr: IO[Any] | None = None,
) -> int:
    """Run a native command (``python script.py``) whose Spark sessions, if any,
    start under ``settings``. Returns the command's exit code."""
    if not command:
        raise ConfigError("run: expected a command after --, got nothing")
    backend = tee or NoTee()
    env = child_environment(settings)
    argv = list(command)
    if argv[0] in ("python", "python3"):
        argv[0] = settings.conf()["spark.pyspark.python"]
    with conf_dir(settings) as confs:
        env["SPARK_CONF_DIR"] = str(confs)
        props = confs / "spark.properties"
        # pyspark's gateway launcher reads this when a session is created.
        env["PYSPARK_SUBMIT_ARGS"] = f"--properties-file {shlex.quote(str(props))} pyspark-shell"
        argv = backend.wrap(argv, env)
        return _run_child(argv, env, Path(cwd) if cwd else None, stdout, stderr)
