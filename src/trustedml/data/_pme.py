"""Parquet Modular Encryption (PME) with trusted-ml key-encryption keys, pyarrow side.

Each Parquet file gets fresh data keys (DEKs) from pyarrow; the KMS client below
wraps them with a KEK from a :class:`KeyRing`, in the format of
:mod:`trustedml.hazmat.keywrap`, base64-encoded, and the wrapped keys are stored in
the file footer. The Spark side (:mod:`trustedml.spark._pme`, a Java KMS client)
uses the same format, so files written here read in Spark and the other way round.

Single wrapping (``double_wrapping=False``): each DEK is wrapped directly by the
KEK. Double wrapping would add a locally generated intermediate KEK per master key,
whose own wrapping format differs between implementations for no security gain
here, since our "KMS" is an in-process AES-GCM keyring anyway.

pyarrow is imported inside the functions, so ``import trustedml`` works without it.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from trustedml.data._keystore import KeyRing, check_key_id
from trustedml.errors import (
    ConfigError,
    IntegrityError,
    KeyNotFoundError,
    NotEncryptedError,
    TrustedMLError,
    reworded,
)

if TYPE_CHECKING:
    import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]
    import pyarrow.parquet.encryption as pe  # type: ignore[import-untyped,unused-ignore]

__all__ = [
    "DATA_KEY_LENGTH_BITS",
    "crypto_factory",
    "kms_client",
    "read_encrypted_parquet",
    "write_encrypted_parquet",
]

# AES-256 data keys, as everywhere else in trusted-ml (pyarrow and parquet-mr default
# to 128). Readers take the length from the unwrapped key, so this is a writer choice.
DATA_KEY_LENGTH_BITS = 256


def kms_client(keyring: KeyRing, unwrapped: list[str] | None = None) -> pe.KmsClient:
    """A ``pyarrow.parquet.encryption.KmsClient`` backed by ``keyring``.

    Each successful unwrap appends the KEK id to ``unwrapped``, when given.
    """
    import pyarrow.parquet.encryption as pe

    class TrustedMLKmsClient(pe.KmsClient):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()

        def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
            wrapped = keyring.wrap_key(master_key_identifier, bytes(key_bytes))
            return base64.b64encode(wrapped).decode("ascii")

        def unwrap_key(self, wrapped_key: str | bytes, master_key_identifier: str) -> bytes:
            try:
                raw = base64.b64decode(wrapped_key, validate=True)
            except (binascii.Error, ValueError):
                raise IntegrityError(
                    f"wrapped key for {master_key_identifier!r} is not base64"
                ) from None
            key = keyring.unwrap_key(master_key_identifier, raw).reveal()
            if unwrapped is not None:
                unwrapped.append(master_key_identifier)
            return key

    return TrustedMLKmsClient()


def crypto_factory(keyring: KeyRing, unwrapped: list[str] | None = None) -> pe.CryptoFactory:
    """A ``pyarrow.parquet.encryption.CryptoFactory`` whose KMS is ``keyring``.

    pyarrow caches KMS clients (and, with double wrapping, keys) inside a factory:
    make one per key ring, never one shared across rings.
    """
    import pyarrow.parquet.encryption as pe

    return pe.CryptoFactory(lambda _config: kms_client(keyring, unwrapped))


def _check_column_keys(column_keys: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for key_id, columns in column_keys.items():
        check_key_id(key_id)
        if isinstance(columns, str):
            raise ConfigError(
                f"column_keys[{key_id!r}]: expected a sequence of column names, got a string"
            )
        for column in columns:
            if column in seen:
                raise ConfigError(
                    f"column {column!r}: encrypted with both {seen[column]!r} and {key_id!r}"
                )
            seen[column] = key_id
        out[key_id] = list(columns)
    return out


# Not about keys or data: let the caller see the ordinary Python error.
_PASS_THROUGH = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def _translate(exc: Exception, path: str | os.PathLike[str], action: str) -> TrustedMLError:
    """Our own errors raised inside pyarrow's KMS callbacks keep their type; pyarrow's
    own decryption failures become :class:`IntegrityError`."""
    where = os.fspath(path)
    if isinstance(exc, TrustedMLError):
        return reworded(exc, f"{where}: cannot {action}: {exc}")
    text = str(exc)
    if "Parquet magic bytes not found" in text:
        return NotEncryptedError(f"{where}: not a Parquet file ({text})")
    return IntegrityError(f"{where}: cannot {action} (wrong or missing key, or modified): {text}")


def write_encrypted_parquet(
    table: pa.Table,
    path: str | os.PathLike[str],
    *,
    keyring: KeyRing,
    footer_key: str,
    column_keys: Mapping[str, Sequence[str]] | None = None,
    plaintext_footer: bool = False,
) -> None:
    """Write ``table`` to ``path`` as encrypted Parquet.

    ``footer_key`` is the KEK id protecting the footer (schema, statistics, key
    metadata). ``column_keys`` maps KEK ids to the columns each encrypts; columns
    named nowhere stay plaintext. Without ``column_keys`` every column is encrypted
    with ``footer_key``. ``plaintext_footer`` keeps the footer readable (signed, not
    encrypted) for readers without keys; the file then ends in ``PAR1``, not ``PARE``.
    """
    import pyarrow.parquet as pq
    import pyarrow.parquet.encryption as pe

    check_key_id(footer_key)
    options: dict[str, Any] = {
        "footer_key": footer_key,
        "plaintext_footer": plaintext_footer,
        "double_wrapping": False,
        "internal_key_material": True,
        "data_key_length_bits": DATA_KEY_LENGTH_BITS,
        "encryption_algorithm": "AES_GCM_V1",
    }
    if column_keys is None:
        options["uniform_encryption"] = True
    else:
        options["column_keys"] = _check_column_keys(column_keys)
    missing = {footer_key, *(column_keys or {})} - set(keyring.key_ids())
    if missing:
        # Fail before pyarrow creates (and leaves behind) a partial file.
        raise KeyNotFoundError(
            f"{os.fspath(path)}: no key-encryption key {sorted(missing)} in this key ring"
        )
    unknown = {c for cols in (column_keys or {}).values() for c in cols} - set(table.column_names)
    if unknown:
        raise ConfigError(f"column_keys: no column {sorted(unknown)} in the table")
    try:
        properties = crypto_factory(keyring).file_encryption_properties(
            pe.KmsConnectionConfig(), pe.EncryptionConfiguration(**options)
        )
        pq.write_table(table, path, encryption_properties=properties)
    except _PASS_THROUGH:
        raise
    except Exception as exc:
        raise _translate(exc, path, "write encrypted Parquet") from exc


def read_encrypted_parquet(
    path: str | os.PathLike[str],
    *,
    keyring: KeyRing,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Read an encrypted Parquet file (or directory of them) with keys from ``keyring``.

    A missing KEK raises :class:`~trustedml.errors.KeyNotFoundError`; a wrong KEK, a
    modified file or a key that cannot be unwrapped raises
    :class:`~trustedml.errors.IntegrityError`. Both messages name ``path``.

    pyarrow's decryption properties accept plaintext files, so a plaintext file put
    in place of an encrypted one would read without complaint; when no key at all
    was unwrapped this raises :class:`~trustedml.errors.NotEncryptedError` instead.
    (In a directory, one plaintext file among encrypted ones is not detected.)
    """
    import pyarrow.parquet as pq
    import pyarrow.parquet.encryption as pe

    unwrapped: list[str] = []
    try:
        properties = crypto_factory(keyring, unwrapped).file_decryption_properties(
            pe.KmsConnectionConfig(), pe.DecryptionConfiguration()
        )
        table = pq.read_table(
            path,
            columns=None if columns is None else list(columns),
            decryption_properties=properties,
        )
    except _PASS_THROUGH:
        raise
    except Exception as exc:
        raise _translate(exc, path, "read encrypted Parquet") from exc
    if not unwrapped:
        raise NotEncryptedError(f"{os.fspath(path)}: not an encrypted Parquet file")
    return table
