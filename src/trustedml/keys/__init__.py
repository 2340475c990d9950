"""Key directories: TLS material, Spark secrets and the enclave key, sealed at rest."""

from trustedml.hazmat.sealing import ScryptParams
from trustedml.keys._directory import (
    KeyDirectory,
    KeyManifest,
    SealedSecrets,
    SecretName,
    init_key_directory,
)
from trustedml.keys._identity import load_tls_identity

__all__ = [
    "KeyDirectory",
    "KeyManifest",
    "ScryptParams",
    "SealedSecrets",
    "SecretName",
    "init_key_directory",
    "load_tls_identity",
]
