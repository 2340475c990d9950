"""The `sim` TEE backend: the attested workflow with no hardware protection, said loudly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from trustedml.attestation import SimKey, SimProvider
from trustedml.errors import ConfigError
from trustedml.tee._backend import ENV_SIM_KEY, Job, LaunchPlan, job_environment
from trustedml.tee._measure import JobMeasurement

# One headline, then one paragraph: renderers wrap it to their width.
SIM_BANNER = (
    "--tee sim: SIMULATED TEE. NO HARDWARE PROTECTION IS PRESENT.\n"
    "The host, its root user and its kernel can read and change this job's memory, "
    "keys and data. Sim evidence is signed by a key on this machine ({key}) and "
    "proves nothing about hardware; a key broker refuses it unless its policy sets "
    "allow_simulated. Use --tee sim for development and tests only."
)


class SimBackend:
    """A simulated TEE for development: runs the job natively, checks every trusted
    file against the job measurement right before it starts, and signs ``sim``
    evidence binding the measurement with the installation's sim key.

    It protects nothing: the launch plan carries a banner saying so.
    """

    name = "sim"
    hardware_protected = False
    measures = True

    def __init__(self, key_path: str | Path) -> None:
        if not str(key_path):
            raise ConfigError("sim key: expected a file path, got ''")
        self._key_path = Path(key_path)

    @property
    def key_path(self) -> Path:
        return self._key_path

    def evidence_provider(self, measurement: JobMeasurement) -> SimProvider:
        """A provider of sim evidence whose measurement is ``measurement``'s digest."""
        return SimProvider(SimKey.load_or_create(self._key_path), measurement=measurement.digest)

    def wrap(self, argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
        return list(argv)

    def prepare(self, job: Job) -> LaunchPlan:
        measurement = job.require_measurement(self.name)
        provider = self.evidence_provider(measurement)
        evidence = provider.get_evidence(measurement.digest)
        env = job_environment(
            job.env, self.name, measurement, **{ENV_SIM_KEY: str(self._key_path.resolve())}
        )
        return LaunchPlan(
            argv=job.argv,
            env=env,
            cwd=job.cwd,
            banner=SIM_BANNER.format(key=self._key_path),
            notes=(f"job measurement {measurement.hex}",),
            evidence=evidence,
            checks=(measurement.verify_files,),
        )

    def __repr__(self) -> str:
        return f"SimBackend(key_path={str(self._key_path)!r})"
