"""The TeeBackend protocol, the Job a launcher hands it and the LaunchPlan it returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from trustedml._env import ENV_JOB_MEASUREMENT, ENV_SIM_KEY, ENV_TEE, ENV_TSM_ROOT, JOB_ENV
from trustedml.errors import LaunchError
from trustedml.tee._measure import JobMeasurement
from trustedml.tee._settings import JobSettings

# What a running job learns about where it runs (trustedml.tee.job_*() read them); the
# names live in trustedml._env, shared with trustedml.runtime, and are re-exported here.
__all__ = [
    "ENV_JOB_MEASUREMENT",
    "ENV_SIM_KEY",
    "ENV_TEE",
    "ENV_TSM_ROOT",
    "JOB_ENV",
    "Job",
    "LaunchPlan",
    "NoTee",
    "TeeBackend",
    "job_environment",
]


@dataclass(frozen=True)
class Job:
    """A job about to be launched, as a launcher hands it to :meth:`TeeBackend.prepare`.

    ``argv`` runs it natively; ``env`` is the child's environment, secrets included.
    ``app``/``args``/``py_files`` describe the Python application (``app`` is None
    for a ``run`` command that is not ``python SCRIPT``). ``conf_dir`` is the private
    SPARK_CONF_DIR of this launch; ``measurement`` is set when the backend measures.
    """

    launcher: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    settings: JobSettings = field(repr=False)
    conf_dir: Path
    app: Path | None = None
    args: tuple[str, ...] = ()
    py_files: tuple[Path, ...] = ()
    measurement: JobMeasurement | None = None
    cwd: Path | None = None

    def require_measurement(self, backend: str) -> JobMeasurement:
        """The measurement, or :class:`LaunchError` for ``backend`` when there is none."""
        if self.measurement is None:
            raise LaunchError(f"--tee {backend}: the job was not measured")
        return self.measurement


@dataclass(frozen=True)
class LaunchPlan:
    """What a backend decided: the command to start, with what environment, and what
    to check right before starting it.

    ``launch`` is False when the backend only prepared files (gramine ``--dry-run``).
    ``banner`` is a warning the caller must show (sim: no hardware protection);
    ``notes`` are informational lines; ``evidence`` is launch evidence whose
    report_data is the job measurement; ``files`` names what was written.
    ``checks`` run immediately before the process starts; each raises
    :class:`LaunchError` to refuse.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    cwd: Path | None = None
    launch: bool = True
    banner: str | None = None
    notes: tuple[str, ...] = ()
    evidence: bytes | None = field(default=None, repr=False)
    files: Mapping[str, Path] = field(default_factory=dict)
    checks: tuple[Callable[[], None], ...] = field(default=(), repr=False)


@runtime_checkable
class TeeBackend(Protocol):
    """A trusted execution environment that can launch a job."""

    @property
    def name(self) -> str: ...

    @property
    def hardware_protected(self) -> bool:
        """True only when memory is protected by a hardware TEE."""
        ...

    @property
    def measures(self) -> bool:
        """True when :meth:`prepare` needs the job measurement."""
        ...

    def wrap(self, argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
        """Return the argv that runs ``argv`` inside this backend."""
        ...

    def prepare(self, job: Job) -> LaunchPlan:
        """Decide how to launch ``job``: may write files, add environment, or refuse
        (:class:`LaunchError`)."""
        ...


def job_environment(
    env: Mapping[str, str], tee: str, measurement: JobMeasurement | None, **extra: str
) -> dict[str, str]:
    """``env`` plus what tells the job where it runs."""
    out = {k: v for k, v in env.items() if k not in JOB_ENV}
    out[ENV_TEE] = tee
    if measurement is not None:
        out[ENV_JOB_MEASUREMENT] = measurement.hex
    out.update(extra)
    return out


class NoTee:
    """Run the job directly on the host: no TEE, no attestation."""

    name = "none"
    hardware_protected = False
    measures = False

    def wrap(self, argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
        return list(argv)

    def prepare(self, job: Job) -> LaunchPlan:
        return LaunchPlan(
            argv=job.argv,
            env=job_environment(job.env, self.name, job.measurement),
            cwd=job.cwd,
        )
