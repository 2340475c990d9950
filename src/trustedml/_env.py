"""The environment variable names a launcher sets and a running job reads."""

from __future__ import annotations

__all__ = [
    "ENV_BROKER_CA",
    "ENV_BROKER_URL",
    "ENV_JOB_MEASUREMENT",
    "ENV_KEYRING",
    "ENV_SIM_KEY",
    "ENV_TEE",
    "ENV_TSM_ROOT",
    "JOB_ENV",
]

# Keys: the launcher (spark, the CLI) writes them; trustedml.runtime and the Parquet
# KMS client (spark/java/TrustedMLKmsClient.java, which spells it out) read them.
ENV_KEYRING = "TRUSTEDML_KEYRING"
ENV_BROKER_URL = "TRUSTEDML_BROKER_URL"
ENV_BROKER_CA = "TRUSTEDML_BROKER_CA"

# Where the job runs: a TEE backend writes them; trustedml.tee.job_*() and
# trustedml.runtime read them.
ENV_TEE = "TRUSTEDML_TEE"
ENV_JOB_MEASUREMENT = "TRUSTEDML_JOB_MEASUREMENT"
ENV_SIM_KEY = "TRUSTEDML_SIM_KEY"
ENV_TSM_ROOT = "TRUSTEDML_TSM_ROOT"

# Only the chosen backend may set these: a launcher drops inherited values.
JOB_ENV = (ENV_TEE, ENV_JOB_MEASUREMENT, ENV_SIM_KEY, ENV_TSM_ROOT)
