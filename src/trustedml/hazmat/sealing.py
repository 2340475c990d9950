"""Passphrase sealing: scrypt-derived key, AES-256-GCM, header as associated data.

Layout (all integers big-endian), documented in docs/keys.md::

    magic    8 bytes  b"TMLSEAL1"
    kdf      1 byte   1 = scrypt
    log2_n   1 byte   scrypt cost N = 2**log2_n
    r        1 byte   scrypt block size
    p        1 byte   scrypt parallelism
    salt    16 bytes
    nonce   12 bytes
    body     rest     AES-256-GCM ciphertext || 16-byte tag, AAD = the 40 header bytes
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from trustedml._secret import Secret
from trustedml.errors import ConfigError, UnsealError

MAGIC = b"TMLSEAL1"
KDF_SCRYPT = 1
_HEADER = struct.Struct(">8sBBBB16s12s")
HEADER_SIZE = _HEADER.size
TAG_SIZE = 16


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost. The default (N=2**17, r=8, p=1) follows current OWASP advice."""

    log2_n: int = 17
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        # Bounds keep a hostile header from asking for gigabytes of memory.
        if not 10 <= self.log2_n <= 22:
            raise ConfigError(f"scrypt log2_n must be in 10..22, got {self.log2_n}")
        if not 1 <= self.r <= 32:
            raise ConfigError(f"scrypt r must be in 1..32, got {self.r}")
        if not 1 <= self.p <= 16:
            raise ConfigError(f"scrypt p must be in 1..16, got {self.p}")


def _derive(passphrase: Secret, salt: bytes, params: ScryptParams) -> bytes:
    kdf = Scrypt(salt=salt, length=32, n=2**params.log2_n, r=params.r, p=params.p)
    return kdf.derive(passphrase.reveal())


def seal(plaintext: bytes, passphrase: Secret, params: ScryptParams | None = None) -> bytes:
    """Encrypt ``plaintext`` under a key derived from ``passphrase``."""
    params = params or ScryptParams()
    salt = os.urandom(16)
    nonce = os.urandom(12)
    header = _HEADER.pack(MAGIC, KDF_SCRYPT, params.log2_n, params.r, params.p, salt, nonce)
    key = _derive(passphrase, salt, params)
    return header + AESGCM(key).encrypt(nonce, plaintext, header)


def read_params(blob: bytes, name: str = "sealed file") -> ScryptParams:
    """Return the KDF parameters of a sealed blob, validating its header."""
    if len(blob) < HEADER_SIZE + TAG_SIZE or not blob.startswith(MAGIC):
        raise UnsealError(f"{name}: not a trusted-ml sealed file (bad magic or too short)")
    _, kdf, log2_n, r, p, _, _ = _HEADER.unpack_from(blob)
    if kdf != KDF_SCRYPT:
        raise UnsealError(f"{name}: unsupported KDF id: expected {KDF_SCRYPT}, got {kdf}")
    try:
        return ScryptParams(log2_n, r, p)
    except ConfigError as exc:
        raise UnsealError(f"{name}: {exc}") from exc


def unseal(blob: bytes, passphrase: Secret, name: str = "sealed file") -> bytes:
    """Decrypt a blob made by :func:`seal`; raise UnsealError on any mismatch."""
    params = read_params(blob, name)
    header = blob[:HEADER_SIZE]
    _, _, _, _, _, salt, nonce = _HEADER.unpack(header)
    key = _derive(passphrase, salt, params)
    try:
        return AESGCM(key).decrypt(nonce, blob[HEADER_SIZE:], header)
    except InvalidTag:
        raise UnsealError(
            f"{name}: cannot unseal: wrong passphrase, or the file was modified"
        ) from None
