"""The `cvm` TEE backend: jobs inside an Intel TDX or AMD SEV-SNP confidential VM."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from trustedml.attestation import TSM_REPORT_ROOT, ConfigfsTsmProvider, EvidenceProvider
from trustedml.errors import EvidenceProviderError, LaunchError
from trustedml.tee._backend import ENV_TSM_ROOT, Job, LaunchPlan, job_environment


class CvmBackend:
    """Run inside an Intel TDX or AMD SEV-SNP confidential VM.

    The whole VM is the trusted boundary, so the job runs natively. Before it starts,
    the backend takes launch evidence through configfs-tsm with the job measurement
    as report_data (refusing to start when there is no TDX/SNP report interface),
    and checks every trusted file against the measurement.

    ``provider`` replaces the configfs-tsm provider (tests play the kernel with it).
    """

    name = "cvm"
    hardware_protected = True
    measures = True

    def __init__(
        self, tsm_root: str | Path = TSM_REPORT_ROOT, *, provider: EvidenceProvider | None = None
    ) -> None:
        self._tsm_root = Path(tsm_root)
        self._provider = provider

    @property
    def tsm_root(self) -> Path:
        return self._tsm_root

    def evidence_provider(self) -> EvidenceProvider:
        """The TDX/SNP evidence provider of this VM."""
        if self._provider is not None:
            return self._provider
        return ConfigfsTsmProvider(self._tsm_root)

    def wrap(self, argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
        return list(argv)

    def prepare(self, job: Job) -> LaunchPlan:
        measurement = job.require_measurement(self.name)
        provider = self.evidence_provider()
        try:
            evidence = provider.get_evidence(measurement.digest)
            kind = provider.evidence_type
        except EvidenceProviderError as exc:
            raise LaunchError(
                f"--tee cvm: no confidential-VM attestation here, refusing to start: {exc}"
            ) from None
        env = job_environment(
            job.env, self.name, measurement, **{ENV_TSM_ROOT: str(self._tsm_root)}
        )
        return LaunchPlan(
            argv=job.argv,
            env=env,
            cwd=job.cwd,
            notes=(
                f"job measurement {measurement.hex}",
                f"cvm: {kind.value} launch evidence ({len(evidence)} bytes) from configfs-tsm",
            ),
            evidence=evidence,
            checks=(measurement.verify_files,),
        )

    def __repr__(self) -> str:
        return f"CvmBackend(tsm_root={str(self._tsm_root)!r})"
