"""Encrypted data at rest: the trusted-ml file format, streams and key stores."""

from trustedml.data._files import (
    SUFFIX,
    FileResult,
    decrypt_file,
    decrypt_path,
    encrypt_file,
    encrypt_path,
    read_encrypted_bytes,
    write_encrypted_bytes,
)
from trustedml.data._keystore import (
    KEY_ID_PATTERN,
    DataKey,
    KeyRing,
    KeyStore,
    LocalKeyStore,
    check_key_id,
)
from trustedml.data._pme import read_encrypted_parquet, write_encrypted_parquet
from trustedml.data._streams import DecryptingReader, EncryptingWriter, open_encrypted

__all__ = [
    "KEY_ID_PATTERN",
    "SUFFIX",
    "DataKey",
    "DecryptingReader",
    "EncryptingWriter",
    "FileResult",
    "KeyRing",
    "KeyStore",
    "LocalKeyStore",
    "check_key_id",
    "decrypt_file",
    "decrypt_path",
    "encrypt_file",
    "encrypt_path",
    "open_encrypted",
    "read_encrypted_bytes",
    "read_encrypted_parquet",
    "write_encrypted_bytes",
    "write_encrypted_parquet",
]
