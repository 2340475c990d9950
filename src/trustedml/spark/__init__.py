"""Secure Spark: configuration and job submission."""

from trustedml.spark._conf_policy import ConfRefusal, conf_refusal
from trustedml.spark._config import (
    KUBERNETES_RPC_TLS_ENV,
    KUBERNETES_SECRET_ENV,
    DeployMode,
    PlainSparkConfig,
    SecureSparkConfig,
    SparkSettings,
    auth_secret_for,
    check_secure_conf,
    cluster_secret,
    kubernetes_security_conf,
    mode_for_master,
    properties_text,
)
from trustedml.spark._encrypted import (
    read_encrypted,
    read_encrypted_pandas,
    register,
    write_encrypted,
    write_encrypted_pandas,
)
from trustedml.spark._javac import compiled_jar
from trustedml.spark._jvmfs import FS_CLASS, fs_conf, fs_jar, tml_uri
from trustedml.spark._keyagent import run_key_agent
from trustedml.spark._lint import (
    ALLOW_PLAINTEXT_COLLECTIVES,
    IGNORE_SSL,
    LINT_RULES,
    Finding,
    LintRule,
    Severity,
    is_literal_secret,
    lint_conf_files,
    lint_finding,
    lint_properties,
    ordered_findings,
    shared_secret_findings,
)
from trustedml.spark._measured import MACHINE_LOCAL_KEYS, measured_conf, measurement_settings
from trustedml.spark._preflight import check_driver_host, driver_address, preflight
from trustedml.spark._properties import SparkProperty, parse_properties, read_properties
from trustedml.spark._session import start_session
from trustedml.spark._submit import (
    child_environment,
    run,
    spark_environment,
    spark_home,
    submit,
    write_conf_dir,
)

__all__ = [
    "ALLOW_PLAINTEXT_COLLECTIVES",
    "FS_CLASS",
    "IGNORE_SSL",
    "KUBERNETES_RPC_TLS_ENV",
    "KUBERNETES_SECRET_ENV",
    "LINT_RULES",
    "MACHINE_LOCAL_KEYS",
    "ConfRefusal",
    "DeployMode",
    "Finding",
    "LintRule",
    "PlainSparkConfig",
    "SecureSparkConfig",
    "Severity",
    "SparkProperty",
    "SparkSettings",
    "auth_secret_for",
    "check_driver_host",
    "check_secure_conf",
    "child_environment",
    "cluster_secret",
    "compiled_jar",
    "conf_refusal",
    "driver_address",
    "fs_conf",
    "fs_jar",
    "is_literal_secret",
    "kubernetes_security_conf",
    "lint_conf_files",
    "lint_finding",
    "lint_properties",
    "measured_conf",
    "measurement_settings",
    "mode_for_master",
    "ordered_findings",
    "parse_properties",
    "preflight",
    "properties_text",
    "read_encrypted",
    "read_encrypted_pandas",
    "read_properties",
    "register",
    "run",
    "run_key_agent",
    "shared_secret_findings",
    "spark_environment",
    "spark_home",
    "start_session",
    "submit",
    "tml_uri",
    "write_conf_dir",
    "write_encrypted",
    "write_encrypted_pandas",
]
