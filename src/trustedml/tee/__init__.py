"""TEE backends (none, sim, gramine, cvm) and the job measurement."""

from trustedml.tee._backend import (
    ENV_JOB_MEASUREMENT,
    ENV_SIM_KEY,
    ENV_TEE,
    ENV_TSM_ROOT,
    JOB_ENV,
    Job,
    LaunchPlan,
    NoTee,
    TeeBackend,
)
from trustedml.tee._cvm import CvmBackend
from trustedml.tee._daemon import measure_daemon
from trustedml.tee._gramine import (
    DEFAULT_ENCLAVE_SIZE,
    DEFAULT_MAX_THREADS,
    GramineBackend,
    GramineRuntime,
    build_manifest,
)
from trustedml.tee._job import job_evidence_provider, job_measurement, job_tee
from trustedml.tee._measure import (
    DIGEST_SIZE,
    JobMeasurement,
    TrustedFile,
    java_binary,
    java_properties,
    measure_job,
)
from trustedml.tee._registry import BACKEND_NAMES, get_backend
from trustedml.tee._settings import JobSettings
from trustedml.tee._sim import SIM_BANNER, SimBackend

__all__ = [
    "BACKEND_NAMES",
    "DEFAULT_ENCLAVE_SIZE",
    "DEFAULT_MAX_THREADS",
    "DIGEST_SIZE",
    "ENV_JOB_MEASUREMENT",
    "ENV_SIM_KEY",
    "ENV_TEE",
    "ENV_TSM_ROOT",
    "JOB_ENV",
    "SIM_BANNER",
    "CvmBackend",
    "GramineBackend",
    "GramineRuntime",
    "Job",
    "JobMeasurement",
    "JobSettings",
    "LaunchPlan",
    "NoTee",
    "SimBackend",
    "TeeBackend",
    "TrustedFile",
    "build_manifest",
    "get_backend",
    "java_binary",
    "java_properties",
    "job_evidence_provider",
    "job_measurement",
    "job_tee",
    "measure_daemon",
    "measure_job",
]
