"""TEE backends (none, sim, gramine, cvm) and the job measurement."""

from trustedml.tee._backend import (
    ENV_JOB_MEASUREMENT,
    ENV_SIM_KEY,
    ENV_TEE,
    ENV_TSM_ROOT,
    Job,
    LaunchPlan,
    NoTee,
    TeeBackend,
    get_backend,
)
from trustedml.tee._cvm import CvmBackend
from trustedml.tee._gramine import GramineBackend, GramineRuntime, build_manifest
from trustedml.tee._job import job_evidence_provider, job_measurement, job_tee
from trustedml.tee._measure import (
    JobMeasurement,
    TrustedFile,
    measure_job,
    measured_conf,
    measurement_settings,
)
from trustedml.tee._sim import SIM_BANNER, SimBackend

__all__ = [
    "ENV_JOB_MEASUREMENT",
    "ENV_SIM_KEY",
    "ENV_TEE",
    "ENV_TSM_ROOT",
    "SIM_BANNER",
    "CvmBackend",
    "GramineBackend",
    "GramineRuntime",
    "Job",
    "JobMeasurement",
    "LaunchPlan",
    "NoTee",
    "SimBackend",
    "TeeBackend",
    "TrustedFile",
    "build_manifest",
    "get_backend",
    "job_evidence_provider",
    "job_measurement",
    "job_tee",
    "measure_job",
    "measured_conf",
    "measurement_settings",
]
