"""Secure Spark: configuration and job submission."""

from trustedml.spark._conf_policy import ConfRefusal, conf_refusal
from trustedml.spark._config import (
    DeployMode,
    PlainSparkConfig,
    SecureSparkConfig,
    SparkSettings,
    check_secure_conf,
    mode_for_master,
)
from trustedml.spark._encrypted import (
    read_encrypted,
    read_encrypted_pandas,
    register,
    write_encrypted,
    write_encrypted_pandas,
)
from trustedml.spark._measured import MACHINE_LOCAL_KEYS, measured_conf, measurement_settings
from trustedml.spark._session import start_session
from trustedml.spark._submit import run, spark_home, submit

__all__ = [
    "MACHINE_LOCAL_KEYS",
    "ConfRefusal",
    "DeployMode",
    "PlainSparkConfig",
    "SecureSparkConfig",
    "SparkSettings",
    "check_secure_conf",
    "conf_refusal",
    "measured_conf",
    "measurement_settings",
    "mode_for_master",
    "read_encrypted",
    "read_encrypted_pandas",
    "register",
    "run",
    "spark_home",
    "start_session",
    "submit",
    "write_encrypted",
    "write_encrypted_pandas",
]
