"""Secure Spark: configuration and job submission."""

from trustedml.spark._config import (
    DeployMode,
    PlainSparkConfig,
    SecureSparkConfig,
    SparkSettings,
    mode_for_master,
)
from trustedml.spark._submit import run, spark_home, submit

__all__ = [
    "DeployMode",
    "PlainSparkConfig",
    "SecureSparkConfig",
    "SparkSettings",
    "mode_for_master",
    "run",
    "spark_home",
    "submit",
]
