"""trusted-ml: PySpark analytics and ML on confidential data in trusted execution
environments.

The stable public API is what ``__all__`` lists; modules whose names start with an
underscore, and :mod:`trustedml.hazmat`, are not part of it.
"""

from trustedml._secret import Secret
from trustedml._version import __version__
from trustedml.errors import (
    ConfigError,
    IntegrityError,
    KeyDirectoryError,
    KeyDirectoryExistsError,
    LaunchError,
    SparkConfigError,
    TrustedMLError,
    UnsealError,
)
from trustedml.keys import (
    KeyDirectory,
    KeyManifest,
    ScryptParams,
    SealedSecrets,
    init_key_directory,
)
from trustedml.spark import (
    DeployMode,
    PlainSparkConfig,
    SecureSparkConfig,
    SparkSettings,
    run,
    submit,
)
from trustedml.tee import NoTee, TeeBackend, get_backend

__all__ = [
    "ConfigError",
    "DeployMode",
    "IntegrityError",
    "KeyDirectory",
    "KeyDirectoryError",
    "KeyDirectoryExistsError",
    "KeyManifest",
    "LaunchError",
    "NoTee",
    "PlainSparkConfig",
    "ScryptParams",
    "SealedSecrets",
    "Secret",
    "SecureSparkConfig",
    "SparkConfigError",
    "SparkSettings",
    "TeeBackend",
    "TrustedMLError",
    "UnsealError",
    "__version__",
    "get_backend",
    "init_key_directory",
    "run",
    "submit",
]
