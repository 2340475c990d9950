"""trusted-ml: PySpark analytics and ML on confidential data in trusted execution
environments.

The stable public API is what ``__all__`` lists; modules whose names start with an
underscore, and :mod:`trustedml.hazmat`, are not part of it.
"""

from trustedml._progress import Progress
from trustedml._secret import Secret
from trustedml._version import __version__
from trustedml.data import (
    DataKey,
    DecryptingReader,
    EncryptingWriter,
    FileResult,
    KeyRing,
    KeyStore,
    LocalKeyStore,
    decrypt_file,
    decrypt_path,
    encrypt_file,
    encrypt_path,
    open_encrypted,
    read_encrypted_bytes,
    write_encrypted_bytes,
)
from trustedml.errors import (
    ConfigError,
    IntegrityError,
    KeyDirectoryError,
    KeyDirectoryExistsError,
    KeyNotFoundError,
    KeyStoreError,
    LaunchError,
    NotEncryptedError,
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
    read_encrypted,
    read_encrypted_pandas,
    run,
    start_session,
    submit,
    write_encrypted,
    write_encrypted_pandas,
)
from trustedml.tee import NoTee, TeeBackend, get_backend

__all__ = [
    "ConfigError",
    "DataKey",
    "DecryptingReader",
    "DeployMode",
    "EncryptingWriter",
    "FileResult",
    "IntegrityError",
    "KeyDirectory",
    "KeyDirectoryError",
    "KeyDirectoryExistsError",
    "KeyManifest",
    "KeyNotFoundError",
    "KeyRing",
    "KeyStore",
    "KeyStoreError",
    "LaunchError",
    "LocalKeyStore",
    "NoTee",
    "NotEncryptedError",
    "PlainSparkConfig",
    "Progress",
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
    "decrypt_file",
    "decrypt_path",
    "encrypt_file",
    "encrypt_path",
    "get_backend",
    "init_key_directory",
    "open_encrypted",
    "read_encrypted",
    "read_encrypted_bytes",
    "read_encrypted_pandas",
    "run",
    "start_session",
    "submit",
    "write_encrypted",
    "write_encrypted_bytes",
    "write_encrypted_pandas",
]
