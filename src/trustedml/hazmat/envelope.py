"""Key broker envelopes: data keys sealed to a client's ephemeral key, the attestation
binding, and the versioned wrapped form of broker data keys.

Byte layouts are specified in docs/broker-protocol.md; this module is the reference.

* The session key: 32 random bytes the broker makes when it accepts an attestation,
  sealed to the client's ephemeral X25519 key with HPKE (RFC 9180) base mode, single
  shot, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM (ids 0x0020,
  0x0001, 0x0002): ``enc (32 bytes) || ciphertext || tag (16 bytes)``, the HPKE
  ``info`` binding the nonce and the session token. Only the holder of the client's
  private key can open it.
* Data keys released in that session: ``iv (12 random bytes) || AES-256-GCM(session
  key, iv, DEK, aad)`` where the AAD binds the operation, the key id and version, the
  request id and the session token (:func:`envelope_info`). One HPKE operation per
  session instead of one per release: X25519 costs ~100 µs, AES-GCM ~2 µs.
* Attestation binding: ``report_data = SHA-512(domain || nonce || client public key ||
  job measurement)``: 64 bytes, the whole report_data field of SGX, TDX, SNP and sim
  evidence.
* Versioned wrapped data key: ``0x02 || uint32 version || keywrap(KEK_v, "id@vN", DEK)``.
"""

from __future__ import annotations

import hashlib
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustedml.errors import IntegrityError
from trustedml.hazmat import keywrap

PUBLIC_KEY_SIZE = 32
ENC_SIZE = 32
TAG_SIZE = 16
NONCE_SIZE = 32
REQUEST_ID_SIZE = 16
REPORT_DATA_SIZE = 64
MAX_JOB_MEASUREMENT_SIZE = 64

SESSION_KEY_SIZE = 32
IV_SIZE = 12
ENVELOPE_DOMAIN = b"trustedml/broker/v1\x00"
BINDING_DOMAIN = b"trustedml/broker/attest/v1\x00"
OPERATIONS = ("datakey", "unwrap")

# HPKE suite ids (RFC 9180 section 7): DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
KEM_ID = 0x0020
KDF_ID = 0x0001
AEAD_ID = 0x0002
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)

WRAP_VERSIONED = 2
_VERSION = struct.Struct(">I")
MAX_KEY_VERSION = 2**32 - 1


# -- client key pairs ------------------------------------------------------------------


def generate_private_key() -> x25519.X25519PrivateKey:
    """A fresh ephemeral X25519 key pair for one broker session."""
    return x25519.X25519PrivateKey.generate()


def public_key_bytes(private_key: x25519.X25519PrivateKey) -> bytes:
    """The 32-byte raw public key (RFC 7748) of ``private_key``."""
    return private_key.public_key().public_bytes_raw()


def load_public_key(data: bytes) -> x25519.X25519PublicKey:
    if len(data) != PUBLIC_KEY_SIZE:
        raise IntegrityError(
            f"client public key: expected {PUBLIC_KEY_SIZE} bytes (raw X25519), got {len(data)}"
        )
    return x25519.X25519PublicKey.from_public_bytes(data)


# -- attestation binding ---------------------------------------------------------------


def report_data(nonce: bytes, client_public_key: bytes, job_measurement: bytes | None) -> bytes:
    """The 64 bytes a client's evidence must carry as report_data.

    ``SHA-512("trustedml/broker/attest/v1" 0x00 || nonce || client public key ||
    job measurement (or nothing))``.
    """
    if len(nonce) != NONCE_SIZE:
        raise IntegrityError(f"nonce: expected {NONCE_SIZE} bytes, got {len(nonce)}")
    if len(client_public_key) != PUBLIC_KEY_SIZE:
        raise IntegrityError(
            f"client public key: expected {PUBLIC_KEY_SIZE} bytes, got {len(client_public_key)}"
        )
    job = job_measurement or b""
    if len(job) > MAX_JOB_MEASUREMENT_SIZE:
        raise IntegrityError(
            f"job measurement: expected at most {MAX_JOB_MEASUREMENT_SIZE} bytes, got {len(job)}"
        )
    return hashlib.sha512(BINDING_DOMAIN + nonce + client_public_key + job).digest()


# -- the session key, sealed to the client ----------------------------------------------


def token_digest(token: str) -> bytes:
    """SHA-256 of the session token's ASCII text: how envelopes and the server name it."""
    return hashlib.sha256(token.encode("ascii")).digest()


def session_info(nonce: bytes, token_sha256: bytes) -> bytes:
    """HPKE ``info`` of the session key: ``"trustedml/broker/v1" 0x00 || "session" ||
    0x00 || nonce (32) || SHA-256(token) (32)``."""
    if len(nonce) != NONCE_SIZE:
        raise IntegrityError(f"nonce: expected {NONCE_SIZE} bytes, got {len(nonce)}")
    if len(token_sha256) != 32:
        raise IntegrityError(f"token digest: expected 32 bytes, got {len(token_sha256)}")
    return ENVELOPE_DOMAIN + b"session\x00" + nonce + token_sha256


def seal(client_public_key: bytes, plaintext: bytes, info: bytes) -> bytes:
    """HPKE base-mode single-shot encryption to ``client_public_key`` (raw X25519)."""
    return _SUITE.encrypt(plaintext, load_public_key(client_public_key), info=info)


def open_sealed(private_key: x25519.X25519PrivateKey, sealed: bytes, info: bytes) -> bytes:
    """The inverse of :func:`seal`; :class:`IntegrityError` when anything differs."""
    if len(sealed) < ENC_SIZE + TAG_SIZE:
        raise IntegrityError(f"sealed key: expected at least {ENC_SIZE + TAG_SIZE} bytes")
    try:
        return _SUITE.decrypt(sealed, private_key, info=info)
    except (InvalidTag, ValueError):
        raise IntegrityError(
            "cannot open the key sealed by the broker (wrong key pair, nonce or token, "
            "or the envelope was modified)"
        ) from None


# -- data keys, sealed under the session key ------------------------------------------


def envelope_info(
    operation: str, key_id: str, version: int, request_id: bytes, token_sha256: bytes
) -> bytes:
    """AAD of a released data key: ``"trustedml/broker/v1" 0x00 || op || 0x00 || key id
    || 0x00 || uint32 version || request id (16) || SHA-256(token) (32)``."""
    if operation not in OPERATIONS:
        raise ValueError(f"operation: expected one of {OPERATIONS}, got {operation!r}")
    if len(request_id) != REQUEST_ID_SIZE:
        raise IntegrityError(f"request id: expected {REQUEST_ID_SIZE} bytes, got {len(request_id)}")
    if len(token_sha256) != 32:
        raise IntegrityError(f"token digest: expected 32 bytes, got {len(token_sha256)}")
    if "\x00" in key_id:
        raise IntegrityError("key id must not contain NUL")
    return b"".join(
        (
            ENVELOPE_DOMAIN,
            operation.encode("ascii"),
            b"\x00",
            key_id.encode("utf-8"),
            b"\x00",
            _VERSION.pack(version),
            request_id,
            token_sha256,
        )
    )


def seal_data_key(session_key: AESGCM, dek: bytes, aad: bytes, iv: bytes | None = None) -> bytes:
    """``iv (12 bytes) || AES-256-GCM(session key, iv, dek, aad)``.

    ``iv`` must never repeat under one session key: random by default; the broker
    counts (every session key is fresh and random, so a counter cannot collide)."""
    if iv is None:
        iv = os.urandom(IV_SIZE)
    elif len(iv) != IV_SIZE:
        raise ValueError(f"iv: expected {IV_SIZE} bytes, got {len(iv)}")
    return iv + session_key.encrypt(iv, dek, aad)


def open_data_key(session_key: AESGCM, sealed: bytes, aad: bytes) -> bytes:
    if len(sealed) < IV_SIZE + TAG_SIZE:
        raise IntegrityError(f"sealed key: expected at least {IV_SIZE + TAG_SIZE} bytes")
    try:
        return session_key.decrypt(sealed[:IV_SIZE], sealed[IV_SIZE:], aad)
    except InvalidTag:
        raise IntegrityError(
            "cannot open the data key released by the broker (another session, key, "
            "request or operation, or the envelope was modified)"
        ) from None


# -- versioned wrapped data keys -------------------------------------------------------


def versioned_key_name(key_id: str, version: int) -> str:
    """The name bound into the inner key wrap's AAD: ``"<key id>@v<version>"``."""
    return f"{key_id}@v{version}"


def wrap_versioned(kek: bytes, key_id: str, version: int, dek: bytes) -> bytes:
    """``0x02 || uint32 version || keywrap.wrap(KEK_v, "id@vN", DEK)`` (66 bytes)."""
    if not 1 <= version <= MAX_KEY_VERSION:
        raise ValueError(f"key version: expected 1..{MAX_KEY_VERSION}, got {version}")
    inner = keywrap.wrap(kek, versioned_key_name(key_id, version), dek)
    return bytes([WRAP_VERSIONED]) + _VERSION.pack(version) + inner


def wrapped_version(wrapped: bytes) -> int:
    """The KEK version a broker-wrapped data key names (not authenticated on its own:
    a changed version fails :func:`unwrap_versioned`)."""
    if len(wrapped) < 1 + _VERSION.size + 1 + 12 + 16 or wrapped[0] != WRAP_VERSIONED:
        raise IntegrityError("wrapped key is not a key broker wrapped key (version 2)")
    (version,) = _VERSION.unpack_from(wrapped, 1)
    if version == 0:
        raise IntegrityError("wrapped key names key version 0")
    return int(version)


def unwrap_versioned(kek: bytes, key_id: str, wrapped: bytes) -> bytes:
    version = wrapped_version(wrapped)
    return keywrap.unwrap(kek, versioned_key_name(key_id, version), wrapped[1 + _VERSION.size :])
