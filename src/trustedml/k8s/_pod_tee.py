"""The TEE a pod's driver or executor runs in: what is measured, and the launch it gets.

The driver measures the job it is about to run (the application, its py-files and
arguments, the Spark conf less what Spark's submission adds per run) from private
copies it then runs, so the code that runs is the code measured; its TEE backend turns
that into evidence and environment, and the application's ``job_keystore()`` attests
to the broker with it. An executor pod is measured like a standalone worker daemon
(the image's code, nothing per pod: one digest per image), and its key agents and
Python workers attest with that pod's evidence, binding the driver's job measurement.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trustedml._env import ENV_WORKER
from trustedml._fs import write_private
from trustedml._version import __version__
from trustedml.errors import ConfigError
from trustedml.k8s._manifests import SIM_DIR, SIM_KEY
from trustedml.k8s._pod import (
    DriverArgs,
    driver_command,
    executor_command,
    local_path,
    parse_driver_args,
    require,
)
from trustedml.spark import measured_conf, read_properties, spark_home
from trustedml.tee import (
    ENV_JOB_MEASUREMENT,
    ENV_SIM_KEY,
    ENV_TEE,
    ENV_TSM_ROOT,
    JOB_ENV,
    CvmBackend,
    Job,
    JobMeasurement,
    SimBackend,
    TeeBackend,
    java_binary,
    measure_daemon,
    measure_job,
)

__all__ = [
    "DEFAULT_SIM_KEY",
    "ENV_POD_WORK",
    "ENV_WORKER",
    "POD_TEES",
    "SUBMISSION_KEYS",
    "PodLaunch",
    "driver_launch",
    "driver_measurement",
    "executor_launch",
    "executor_measurement",
    "pod_conf",
]

POD_TEES = ("gramine", "cvm", "sim")
DEFAULT_SIM_KEY = Path(SIM_DIR) / SIM_KEY
# Where the driver keeps the measured copies (the gramine image makes it an encrypted
# mount sealed to the enclave; elsewhere a private directory of the pod's /tmp).
ENV_POD_WORK = "TRUSTEDML_POD_WORK"
# What Spark's submission client and the driver pod add to the conf (ids, names, times,
# the driver's address, the submitting machine's paths, the resource type the .py
# application implies): left out of the measurement so that the same render measures
# the same on every run, and the same as its spark.properties. What they decide is
# measured elsewhere (the application, the security properties) or is not code that
# runs in the TEE (the pod templates).
SUBMISSION_KEYS = frozenset(
    {
        "spark.app.id",
        "spark.app.submitTime",
        "spark.app.startTime",
        "spark.driver.host",
        "spark.driver.bindAddress",
        "spark.driver.port",
        "spark.driver.blockManager.port",
        "spark.kubernetes.driver.pod.name",
        "spark.kubernetes.executor.podNamePrefix",
        "spark.kubernetes.submitInDriver",
        "spark.kubernetes.memoryOverheadFactor",
        "spark.kubernetes.driver.podTemplateFile",
        "spark.kubernetes.resource.type",
        "spark.kubernetes.executor.podTemplateFile",
        "spark.submit.deployMode",
    }
)
_SUBMISSION_PREFIXES = ("spark.kubernetes.authenticate.submission.",)
# What an executor pod's measurement says it is (measured as a worker daemon with this
# one option: never the same digest as a standalone worker, whose options are its
# cores and memory).
_EXECUTOR_OPTIONS = {"kubernetes": "executor", "trustedml": __version__}
_SPARK_WHY = "Spark's driver pod sets it (submit with spark-submit --master k8s://...)"


@dataclass(frozen=True)
class PodLaunch:
    """What the pod execs: argv and environment (secrets included, never shown), a
    banner the pod must print (sim), notes (non-secret) and checks to run last."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    banner: str | None = None
    notes: tuple[str, ...] = ()
    checks: tuple[Callable[[], None], ...] = field(default=(), repr=False)


class _PodSettings:
    """The driver pod's Spark conf as the measurement sees it (a tee.JobSettings)."""

    def __init__(self, conf: Mapping[str, str]) -> None:
        self._conf = dict(conf)

    def conf(self) -> Mapping[str, str]:
        return dict(self._conf)

    def environment(self) -> Mapping[str, str]:
        return {}

    def insecure_conf(self) -> Mapping[str, str]:
        return {}

    def measured_conf(self) -> Mapping[str, str]:
        return measured_conf(pod_conf(self._conf))


def pod_conf(conf: Mapping[str, str]) -> dict[str, str]:
    """``conf`` less what Spark's submission adds (:data:`SUBMISSION_KEYS`, and the
    empty ``spark.submit.pyFiles`` it writes for a job without py-files): the render's
    own properties and the pod's measure the same."""
    return {
        k: v
        for k, v in conf.items()
        if k not in SUBMISSION_KEYS
        and not k.startswith(_SUBMISSION_PREFIXES)
        and not (k == "spark.submit.pyFiles" and not v.strip())
    }


def _tee(env: Mapping[str, str]) -> str:
    tee = require(env, ENV_TEE, "the pod template sets it (trustedml k8s render --tee ...)")
    if tee not in POD_TEES:
        raise ConfigError(f"{ENV_TEE}: expected one of {', '.join(POD_TEES)}, got {tee!r}")
    return tee


def _backend(tee: str, env: Mapping[str, str]) -> TeeBackend:
    if tee == "sim":
        key = Path(env.get(ENV_SIM_KEY) or DEFAULT_SIM_KEY)
        if not key.is_file():
            # SimBackend would make a new key, which no broker trusts.
            raise ConfigError(f"--tee sim: the sim key is not mounted at {key}")
        return SimBackend(key)
    if tee == "cvm":
        root = env.get(ENV_TSM_ROOT)
        return CvmBackend(root) if root else CvmBackend()
    raise ConfigError(f"--tee {tee}: the pod must run its entrypoint inside the enclave")


def _launch(
    tee: str,
    role: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    measurement: JobMeasurement,
    settings: _PodSettings,
    conf_dir: Path,
    **job: object,
) -> PodLaunch:
    notes: tuple[str, ...] = (f"{role} measurement {measurement.hex}",)
    if tee == "gramine":
        # Already inside the enclave (the image's signed manifest): its evidence is the
        # enclave's own; the job measurement goes into report_data when it attests.
        inside = {k: v for k, v in env.items() if k not in JOB_ENV}
        inside[ENV_TEE] = tee
        inside[ENV_JOB_MEASUREMENT] = measurement.hex
        return PodLaunch(tuple(argv), inside, notes=notes, checks=(measurement.verify_files,))
    plan = _backend(tee, env).prepare(
        Job(
            launcher=f"k8s-{role}",
            argv=tuple(argv),
            env=env,
            settings=settings,
            conf_dir=conf_dir,
            measurement=measurement,
            **job,  # type: ignore[arg-type]
        )
    )
    # The backend calls any measurement the job's; an executor's is the pod's own.
    notes += tuple(n for n in plan.notes if not n.startswith("job measurement"))
    return PodLaunch(plan.argv, plan.env, plan.banner, notes, plan.checks)


def _private_copy(source: Path, work: Path) -> Path:
    target = work / source.name
    if target.exists():
        raise ConfigError(f"{source}: two of the job's files are named {source.name!r}")
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it in the pod ({exc.strerror or exc})") from exc
    write_private(target, data)
    return target


def _work_dir(env: Mapping[str, str]) -> Path:
    base = env.get(ENV_POD_WORK) or None
    if base is not None:
        Path(base).mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="trustedml-driver-", dir=base))


@dataclass(frozen=True)
class _DriverJob:
    """The driver's job as measured: its private copies, conf and measurement."""

    args: DriverArgs
    work: Path
    properties_file: Path
    app: Path
    py_files: tuple[Path, ...]
    settings: _PodSettings
    measurement: JobMeasurement


def _driver_job(parsed: DriverArgs, env: Mapping[str, str]) -> _DriverJob:
    work = _work_dir(env)
    props = _private_copy(parsed.properties_file, work)
    conf = {p.key: p.value for p in read_properties(props)}
    app = _private_copy(local_path(parsed.resource), work)
    py_uris = [u.strip() for u in conf.get("spark.submit.pyFiles", "").split(",") if u.strip()]
    py_files = tuple(_private_copy(local_path(u), work) for u in py_uris)
    settings = _PodSettings(conf)
    measurement = measure_job(
        app, parsed.app_args, py_files, settings, launcher="submit", java=java_binary(env)
    )
    return _DriverJob(parsed, work, props, app, py_files, settings, measurement)


def driver_measurement(args: Sequence[str], env: Mapping[str, str]) -> JobMeasurement:
    """The job measurement a driver pod given ``args`` takes (no TEE, nothing run):
    ``args`` may name the render's ``spark.properties``, which measures the same as the
    conf Spark's submission mounts in the pod (its additions are left out)."""
    job = _driver_job(parse_driver_args(args), env)
    shutil.rmtree(job.work, ignore_errors=True)
    return job.measurement


def driver_launch(args: Sequence[str], env: Mapping[str, str]) -> PodLaunch:
    """The driver pod's launch: Spark's ``driver`` arguments parsed, the properties
    file, application and py-files copied to a private directory and measured there,
    ``spark-submit --deploy-mode client`` on those copies, through the pod's TEE."""
    parsed = parse_driver_args(args)
    tee = _tee(env)
    bind = require(env, "SPARK_DRIVER_BIND_ADDRESS", _SPARK_WHY)
    home = Path(env["SPARK_HOME"]) if env.get("SPARK_HOME") else spark_home()
    job = _driver_job(parsed, env)
    argv = driver_command(
        home, bind, job.args, properties_file=job.properties_file, app=job.app,
        py_files=job.py_files,
    )  # fmt: skip
    return _launch(
        tee, "driver", argv, env, job.measurement, job.settings, job.work,
        app=job.app, args=job.args.app_args, py_files=job.py_files,
    )  # fmt: skip


def executor_measurement(java: Path | None = None) -> JobMeasurement:
    """The measurement of an executor pod of this image: trusted-ml's and pyspark's
    files, the Python and Java versions; nothing per pod or per job (the job's is
    bound into each attestation by the driver's job measurement)."""
    return measure_daemon(
        "worker", _PodSettings({}), options=_EXECUTOR_OPTIONS, java=java or java_binary()
    )


def executor_launch(env: Mapping[str, str]) -> PodLaunch:
    """The executor pod's launch: Spark's executor JVM from the pod's ``SPARK_*``
    variables, through the pod's TEE, with ``TRUSTEDML_WORKER`` naming the pod (its
    key agents label their attestations with it, as a standalone worker's do)."""
    tee = _tee(env)
    java = java_binary(env)
    if java is None:
        raise ConfigError("Java not found: the image needs Java 17 on PATH or JAVA_HOME")
    home = Path(env["SPARK_HOME"]) if env.get("SPARK_HOME") else spark_home()
    argv = executor_command(env, java, home)
    pod = dict(env)
    executor_id = require(env, "SPARK_EXECUTOR_ID", _SPARK_WHY)
    pod[ENV_WORKER] = (
        f"executor-{executor_id}@{require(env, 'SPARK_EXECUTOR_POD_NAME', _SPARK_WHY)}"
    )
    conf_dir = Path(env.get("SPARK_CONF_DIR") or home / "conf")
    return _launch(
        tee, "executor", argv, pod, executor_measurement(java), _PodSettings({}), conf_dir
    )
