"""Inputs and models of a workload: plaintext paths like the origin's, or encrypted
copies (``*.tml``) opened with the job's keys: released by the key broker after
attestation (``--tee ... --broker URL``), or given with ``--kek ID``.

Every process of a job, TorchDistributor's training processes included, gets its
keys itself from :func:`~trustedml.runtime.job_keystore`: they inherit the job's
environment (broker URL and TEE, or the ``--kek`` keyring), and nothing key-bearing
goes through the plaintext files pyspark pickles their arguments into."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from trustedml.data import SUFFIX, open_encrypted, read_encrypted_bytes, write_encrypted_bytes
from trustedml.errors import (
    BrokerKeyNotFoundError,
    ConfigError,
    KeyBrokerError,
    KeyNotFoundError,
    TrustedMLError,
    reworded,
)
from trustedml.runtime import job_keyring, job_keystore

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

E = TypeVar("E", bound=BaseException)


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).endswith(SUFFIX)


def read_input_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an input file, decrypted with the job's keys when it is ``.tml``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: expected an existing input file")
    if is_encrypted(p):
        return read_encrypted_bytes(p, keystore=job_keystore())
    return p.read_bytes()


def check_inputs(*paths: str | os.PathLike[str]) -> None:
    """Fail now, in this process, if an input is missing or an encrypted one cannot be
    opened with the job's keys (only headers are read; under ``--broker`` this attests
    and has each file's data key released), rather than in every training process
    with the launcher's report around it."""
    for path in paths:
        if not Path(path).is_file():
            raise ConfigError(f"{path}: expected an existing input file")
        if is_encrypted(path):
            try:
                with open_encrypted(path, job_keystore()):
                    pass
            except TrustedMLError as exc:
                raise about(exc, "cannot open input", path) from None


def about(exc: E, what: str, path: str | os.PathLike[str]) -> E:
    """``exc`` (same type) as "``what`` PATH: reason", PATH named once."""
    reason = str(exc).removeprefix(f"{os.fspath(path)}: ")
    return reworded(exc, f"{what} {os.fspath(path)}: {reason}")


def read_table(spark: SparkSession, path: str | os.PathLike[str], fmt: str = "csv",
               **options: Any) -> DataFrame:  # fmt: skip
    """A DataFrame from a plaintext or encrypted (``.tml`` or a directory of them) path."""
    from trustedml.spark import read_encrypted

    p = Path(path)
    encrypted = is_encrypted(p) or (p.is_dir() and any(p.rglob(f"*{SUFFIX}")))
    if encrypted:
        return read_encrypted(spark, p, fmt, keystore=job_keystore(), **options)
    reader = spark.read.options(**{k: v for k, v in options.items() if k != "schema"})
    if "schema" in options:
        reader = reader.schema(options["schema"])
    return reader.format(fmt).load(str(p))


def check_key(key_id: str) -> None:
    """Raise unless this job may encrypt under KEK ``key_id``: with ``--kek``, one of
    the keys it was given; with ``--broker``, a key the broker releases to this job
    (this attests now if the job has not yet, so a refusal comes before any work)."""
    try:
        job_keystore().for_workers([key_id])
    except (KeyBrokerError, BrokerKeyNotFoundError):
        raise  # the broker's answer, as it gave it
    except KeyNotFoundError:
        # Not the broker's answer: a --kek job without this key.
        key_ids = job_keyring().key_ids()
        raise ConfigError(
            f"this job has no such key (it has {', '.join(key_ids) or 'none'}; "
            f"start it with --kek {key_id})"
        ) from None


def save_model(data: bytes, path: str | os.PathLike[str], key_id: str) -> Path:
    """Write a serialized model encrypted under the job's KEK ``key_id``. Models are
    never written in plaintext."""
    target = Path(path)
    if not is_encrypted(target):
        target = target.with_name(target.name + SUFFIX)
    write_encrypted_bytes(data, target, key_id=key_id, keystore=job_keystore())
    return target


def load_model(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an encrypted model; a wrong key raises IntegrityError."""
    return read_encrypted_bytes(path, keystore=job_keystore())
