"""The exception tree of trusted-ml: one root, one subtree per layer."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "IntegrityError",
    "KeyDirectoryError",
    "KeyDirectoryExistsError",
    "KeyNotFoundError",
    "KeyStoreError",
    "LaunchError",
    "NotEncryptedError",
    "SparkConfigError",
    "TrustedMLError",
    "UnsealError",
]


class TrustedMLError(Exception):
    """Root of every error trusted-ml raises on purpose.

    Messages name what failed and never contain secret values.
    """


class ConfigError(TrustedMLError, ValueError):
    """A setting or an argument is invalid (says expected vs got)."""


class IntegrityError(TrustedMLError):
    """Authenticated data failed to verify: tampered, truncated or wrong key."""


class NotEncryptedError(IntegrityError):
    """The input is not a trusted-ml encrypted file."""


class KeyStoreError(TrustedMLError):
    """A key store could not create, find or unwrap a key."""


class KeyNotFoundError(KeyStoreError, IntegrityError):
    """No key-encryption key with the requested id: this store cannot open the data."""


class KeyDirectoryError(TrustedMLError):
    """The key directory is missing, incomplete or unreadable."""


class KeyDirectoryExistsError(KeyDirectoryError):
    """`keys init` would overwrite an existing key directory."""


class UnsealError(KeyDirectoryError, IntegrityError):
    """Sealed secrets could not be opened: wrong passphrase or a modified file."""


class SparkConfigError(ConfigError):
    """A Spark setting conflicts with the secure configuration."""


class LaunchError(TrustedMLError):
    """A job could not be started (missing Spark, Java, TEE backend...)."""
