"""The environment variable names a launcher sets and a running job reads."""

from __future__ import annotations

__all__ = [
    "ENV_BROKER_CA",
    "ENV_BROKER_URL",
    "ENV_JOB_MEASUREMENT",
    "ENV_KEYRING",
    "ENV_SIM_KEY",
    "ENV_SPARK_MASTER",
    "ENV_TEE",
    "ENV_TSM_ROOT",
    "ENV_WORKER",
    "JOB_ENV",
]

# Keys: the launcher (spark, the CLI) writes them; trustedml.runtime and the Parquet
# KMS client (spark/java/TrustedMLKmsClient.java, which spells it out) read them.
ENV_KEYRING = "TRUSTEDML_KEYRING"
ENV_BROKER_URL = "TRUSTEDML_BROKER_URL"
ENV_BROKER_CA = "TRUSTEDML_BROKER_CA"

# Where the driver runs: the launcher writes the standalone master it submits to
# (spark://HOST:PORT; unset in local mode), so trustedml.runtime knows the executors run
# on other workers and must attest for their own keys.
ENV_SPARK_MASTER = "TRUSTEDML_SPARK_MASTER"

# Where the job runs: a TEE backend writes them; trustedml.tee.job_*() and
# trustedml.runtime read them.
ENV_TEE = "TRUSTEDML_TEE"
ENV_JOB_MEASUREMENT = "TRUSTEDML_JOB_MEASUREMENT"
ENV_SIM_KEY = "TRUSTEDML_SIM_KEY"
ENV_TSM_ROOT = "TRUSTEDML_TSM_ROOT"
# Which cluster worker this process runs under (<worker-id>@<host>): the worker daemon's
# launcher writes it, its executors inherit it, and trustedml.runtime sends it to the
# key broker as the attest request's `worker` label.
ENV_WORKER = "TRUSTEDML_WORKER"

# Only the chosen backend may set these: a launcher drops inherited values.
JOB_ENV = (ENV_TEE, ENV_JOB_MEASUREMENT, ENV_SIM_KEY, ENV_TSM_ROOT)
