"""Launch PySpark applications and native Python under a Spark configuration."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from trustedml._env import ENV_SPARK_MASTER, JOB_ENV
from trustedml._fs import write_private
from trustedml.errors import ConfigError, LaunchError
from trustedml.spark._config import DeployMode, SparkSettings, mode_for_master, properties_text
from trustedml.tee import (
    DIGEST_SIZE,
    Job,
    JobMeasurement,
    LaunchPlan,
    NoTee,
    TeeBackend,
    java_binary,
    measure_job,
)

# Inherited variables that would silently change what the child runs, or lie to it
# about where it runs.
_SCRUBBED = (
    "PYSPARK_SUBMIT_ARGS",
    "SPARK_CONF_DIR",
    "_SPARK_AUTH_SECRET",
    "SPARK_HOME",
    ENV_SPARK_MASTER,
    *JOB_ENV,
)


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


def spark_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment (or ``base``) minus the variables that would redirect
    Spark or carry a job's secret, with ``SPARK_HOME`` the installed pyspark."""
    env = dict(os.environ if base is None else base)
    for name in _SCRUBBED:
        env.pop(name, None)
    env["SPARK_HOME"] = str(spark_home())
    return env


def child_environment(
    settings: SparkSettings, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a Spark child process: :func:`spark_environment` plus what
    ``settings`` needs (secrets included)."""
    env = spark_environment(base)
    # `python` in the child resolves to the interpreter the job is configured with.
    interp_dir = str(Path(settings.conf()["spark.pyspark.python"]).parent)
    env["PATH"] = interp_dir + os.pathsep + env.get("PATH", "")
    env.update(settings.environment())
    if settings.master.startswith("spark://"):
        # The job's runtime hands its executors a store that attests on their worker
        # (trustedml.runtime), not the driver's session.
        env[ENV_SPARK_MASTER] = settings.master
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
    plan: LaunchPlan,
    stdout: IO[Any] | None,
    stderr: IO[Any] | None,
) -> int:
    argv = list(plan.argv)
    # Last moment before the child exists: a backend may still refuse.
    for check in plan.checks:
        check()
    try:
        proc = subprocess.Popen(
            argv, env=dict(plan.env), cwd=plan.cwd, stdout=stdout, stderr=stderr
        )
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


def _expected_digest(expected: str | bytes) -> bytes:
    if isinstance(expected, bytes):
        value = expected
    else:
        try:
            value = bytes.fromhex(expected.strip())
        except ValueError:
            value = b""
    if len(value) != DIGEST_SIZE:
        raise ConfigError(
            f"expected measurement: expected {DIGEST_SIZE * 2} hex digits (SHA-384), "
            f"got {expected!r}"
        )
    return value


def _measure(
    backend: TeeBackend,
    expected: str | bytes | None,
    app: Path | None,
    args: Sequence[str],
    py_files: Sequence[Path],
    settings: SparkSettings,
    launcher: str,
    env: Mapping[str, str],
) -> JobMeasurement | None:
    if not backend.measures and expected is None:
        return None
    pinned = _expected_digest(expected) if expected is not None else None
    if app is None:
        raise ConfigError(f"--tee {backend.name}: `run` can only measure `python SCRIPT.py [ARGS]`")
    measurement = measure_job(
        app, args, py_files, settings, launcher=launcher, java=java_binary(env)
    )
    if pinned is not None and measurement.digest != pinned:
        raise LaunchError(
            f"job measurement is {measurement.hex}, expected {pinned.hex()}: "
            "the application, an argument, a setting or the environment differs "
            "(`trustedml measure --json` shows the parts)"
        )
    return measurement


def _launch(
    backend: TeeBackend,
    job: Job,
    on_plan: Callable[[LaunchPlan], None] | None,
    stdout: IO[Any] | None,
    stderr: IO[Any] | None,
) -> int:
    plan = backend.prepare(job)
    conf = job.settings.conf()
    if plan.launch and mode_for_master(conf["spark.master"]) is DeployMode.STANDALONE:
        # Imported here: the preflight builds on this module (spark_home).
        from trustedml.spark._preflight import preflight

        # Before anything is shown or started: a master that would fail the job after a
        # minute fails it now, naming why.
        preflight(conf, job.conf_dir / "spark.properties", job.env)
    if on_plan is not None:
        on_plan(plan)
    if not plan.launch:
        return 0
    return _run_child(plan, stdout, stderr)


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
    expected_measurement: str | bytes | None = None,
    on_plan: Callable[[LaunchPlan], None] | None = None,
) -> int:
    """Run a PySpark application with ``spark-submit`` under ``settings``.

    The driver's output goes to ``stdout``/``stderr`` (open files; default: this
    process's). Secrets reach Spark only through the child's environment. ``tee``
    chooses where the job runs (default: the host). When the backend measures the
    job, or ``expected_measurement`` (hex or 48 bytes) is given, the job is measured
    first and refused on a mismatch. ``on_plan`` sees the backend's launch plan
    (banner, notes, evidence) before the job starts. Returns the application's exit
    code (0 when the backend only prepared files).
    """
    app_path = Path(app).resolve()
    files = [Path(p).resolve() for p in py_files]
    _check_files(app_path, files)
    backend = tee or NoTee()
    env = child_environment(settings)
    _check_java(env)
    measurement = _measure(
        backend, expected_measurement, app_path, args, files, settings, "submit", env
    )
    with conf_dir(settings) as confs:
        env["SPARK_CONF_DIR"] = str(confs)
        props = confs / "spark.properties"
        job = Job(
            launcher="submit",
            argv=tuple(submit_argv(app_path, args, props, files)),
            env=env,
            settings=settings,
            conf_dir=confs,
            app=app_path,
            args=tuple(args),
            py_files=tuple(files),
            measurement=measurement,
            cwd=Path(cwd) if cwd else None,
        )
        return _launch(backend, job, on_plan, stdout, stderr)


def _python_script(
    argv: Sequence[str], python: str, cwd: Path | None
) -> tuple[Path | None, list[str]]:
    """(script, its arguments) when ``argv`` is ``PYTHON SCRIPT [ARGS]``."""
    if len(argv) < 2 or argv[0] != python or argv[1].startswith("-"):
        return None, []
    script = (cwd or Path.cwd()) / argv[1]
    if not script.is_file():
        return None, []
    return script.resolve(), list(argv[2:])


def run(
    command: Sequence[str],
    *,
    settings: SparkSettings,
    tee: TeeBackend | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdout: IO[Any] | None = None,
    stderr: IO[Any] | None = None,
    expected_measurement: str | bytes | None = None,
    on_plan: Callable[[LaunchPlan], None] | None = None,
) -> int:
    """Run a native command (``python script.py``) whose Spark sessions, if any,
    start under ``settings``. Backends that measure need ``python SCRIPT [ARGS]``;
    ``expected_measurement`` and ``on_plan`` are as for :func:`submit`. Returns the
    command's exit code."""
    if not command:
        raise ConfigError("run: expected a command after --, got nothing")
    backend = tee or NoTee()
    env = child_environment(settings)
    argv = list(command)
    python = settings.conf()["spark.pyspark.python"]
    if argv[0] in ("python", "python3"):
        argv[0] = python
    work = Path(cwd) if cwd else None
    _check_java(env)
    script, script_args = _python_script(argv, python, work)
    measurement = _measure(
        backend, expected_measurement, script, script_args, (), settings, "run", env
    )
    if script is not None and measurement is not None:
        # Run exactly the file that was measured, wherever the child starts.
        argv[1] = str(script)
    with conf_dir(settings) as confs:
        env["SPARK_CONF_DIR"] = str(confs)
        props = confs / "spark.properties"
        # pyspark's gateway launcher reads this when a session is created.
        env["PYSPARK_SUBMIT_ARGS"] = f"--properties-file {shlex.quote(str(props))} pyspark-shell"
        job = Job(
            launcher="run",
            argv=tuple(argv),
            env=env,
            settings=settings,
            conf_dir=confs,
            app=script,
            args=tuple(script_args),
            measurement=measurement,
            cwd=work,
        )
        return _launch(backend, job, on_plan, stdout, stderr)
