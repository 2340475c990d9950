"""Wrapping data keys under a key-encryption key: AES-256-GCM, key id bound as AAD.

Wrapped form (61 bytes for a 32-byte key)::

    version 1 byte (1) || nonce 12 bytes || ciphertext || tag 16 bytes
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustedml.errors import IntegrityError

WRAP_VERSION = 1
KEK_SIZE = 32


def _aad(key_id: str) -> bytes:
    return b"trustedml/wrap/v1\x00" + key_id.encode("utf-8")


def wrap(kek: bytes, key_id: str, key: bytes) -> bytes:
    nonce = os.urandom(12)
    return bytes([WRAP_VERSION]) + nonce + AESGCM(kek).encrypt(nonce, key, _aad(key_id))


def unwrap(kek: bytes, key_id: str, wrapped: bytes) -> bytes:
    if len(wrapped) < 1 + 12 + 16 or wrapped[0] != WRAP_VERSION:
        raise IntegrityError(f"wrapped key for {key_id!r} is malformed")
    try:
        return AESGCM(kek).decrypt(wrapped[1:13], wrapped[13:], _aad(key_id))
    except InvalidTag:
        raise IntegrityError(
            f"cannot unwrap the data key with key-encryption key {key_id!r} "
            "(wrong key, or the wrapped key was modified)"
        ) from None
