"""The trusted-ml encrypted file format, version 1 (docs/format.md).

Framing only: header layout, chunk geometry, per-chunk AES-256-GCM. Key handling
(wrapping the data key) lives in the key stores; streams and recipes live in
:mod:`trustedml.data`.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustedml.errors import IntegrityError, NotEncryptedError

MAGIC = b"TMLDATA1"
FORMAT_VERSION = 1
CIPHER_AES_256_GCM = 1
TAG_SIZE = 16
DEK_SIZE = 32
FILE_ID_SIZE = 16
MIN_LOG2_CHUNK = 12  # 4 KiB
MAX_LOG2_CHUNK = 24  # 16 MiB
DEFAULT_LOG2_CHUNK = 20  # 1 MiB
MAX_KEY_ID = 128
MAX_WRAPPED = 1024
_FIXED = struct.Struct(">8sBBBB16sB")  # magic, version, cipher, log2 chunk, flags, file id, K
FIXED_SIZE = _FIXED.size  # 29
MAX_HEADER_SIZE = FIXED_SIZE + MAX_KEY_ID + 2 + MAX_WRAPPED


@dataclass(frozen=True)
class Header:
    """A parsed file header. ``raw`` is the exact bytes, bound into every chunk."""

    log2_chunk: int
    file_id: bytes
    key_id: str
    wrapped_key: bytes
    raw: bytes

    @property
    def chunk_size(self) -> int:
        return 1 << self.log2_chunk

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.raw).digest()

    @classmethod
    def build(
        cls,
        key_id: str,
        wrapped_key: bytes,
        log2_chunk: int = DEFAULT_LOG2_CHUNK,
        file_id: bytes | None = None,
    ) -> Header:
        kid = key_id.encode("utf-8")
        if not 1 <= len(kid) <= MAX_KEY_ID:
            raise ValueError(f"key id must be 1..{MAX_KEY_ID} UTF-8 bytes, got {len(kid)}")
        if not 1 <= len(wrapped_key) <= MAX_WRAPPED:
            raise ValueError(f"wrapped key must be 1..{MAX_WRAPPED} bytes, got {len(wrapped_key)}")
        if not MIN_LOG2_CHUNK <= log2_chunk <= MAX_LOG2_CHUNK:
            raise ValueError(
                f"log2 chunk size must be in {MIN_LOG2_CHUNK}..{MAX_LOG2_CHUNK}, got {log2_chunk}"
            )
        file_id = file_id if file_id is not None else os.urandom(FILE_ID_SIZE)
        raw = (
            _FIXED.pack(MAGIC, FORMAT_VERSION, CIPHER_AES_256_GCM, log2_chunk, 0, file_id, len(kid))
            + kid
            + struct.pack(">H", len(wrapped_key))
            + wrapped_key
        )
        return cls(log2_chunk, file_id, key_id, wrapped_key, raw)

    @classmethod
    def parse(cls, data: bytes, name: str = "input") -> Header:
        """Parse a header from the start of ``data`` (which may hold more)."""
        if len(data) < len(MAGIC) or not data.startswith(MAGIC):
            raise NotEncryptedError(f"{name}: not a trusted-ml file (bad magic)")
        if len(data) < FIXED_SIZE:
            raise IntegrityError(f"{name}: header truncated")
        _, version, cipher, log2_chunk, flags, file_id, klen = _FIXED.unpack_from(data)
        if version != FORMAT_VERSION:
            raise IntegrityError(
                f"{name}: unsupported format version: expected {FORMAT_VERSION}, got {version}"
            )
        if cipher != CIPHER_AES_256_GCM:
            raise IntegrityError(
                f"{name}: unsupported cipher id: expected {CIPHER_AES_256_GCM}, got {cipher}"
            )
        if not MIN_LOG2_CHUNK <= log2_chunk <= MAX_LOG2_CHUNK:
            raise IntegrityError(
                f"{name}: chunk size 2**{log2_chunk} outside "
                f"2**{MIN_LOG2_CHUNK}..2**{MAX_LOG2_CHUNK}"
            )
        if flags != 0:
            raise IntegrityError(f"{name}: unknown header flags {flags:#04x}")
        if not 1 <= klen <= MAX_KEY_ID:
            raise IntegrityError(f"{name}: key id length {klen} outside 1..{MAX_KEY_ID}")
        pos = FIXED_SIZE + klen
        if len(data) < pos + 2:
            raise IntegrityError(f"{name}: header truncated")
        try:
            key_id = data[FIXED_SIZE:pos].decode("utf-8")
        except UnicodeDecodeError:
            raise IntegrityError(f"{name}: key id is not UTF-8") from None
        (wlen,) = struct.unpack_from(">H", data, pos)
        if not 1 <= wlen <= MAX_WRAPPED:
            raise IntegrityError(f"{name}: wrapped key length {wlen} outside 1..{MAX_WRAPPED}")
        end = pos + 2 + wlen
        if len(data) < end:
            raise IntegrityError(f"{name}: header truncated")
        return cls(log2_chunk, file_id, key_id, bytes(data[pos + 2 : end]), bytes(data[:end]))


@dataclass(frozen=True)
class Layout:
    """Where each chunk lies in a file of ``file_size`` bytes with ``header``."""

    header_size: int
    chunk_size: int
    count: int
    last_plain: int

    @classmethod
    def of(cls, header: Header, file_size: int, name: str = "input") -> Layout:
        body = file_size - header.size
        stride = header.chunk_size + TAG_SIZE
        if body < TAG_SIZE:
            raise IntegrityError(f"{name}: truncated: no complete chunk after the header")
        count = -(-body // stride)
        last = body - (count - 1) * stride
        if last < TAG_SIZE:
            raise IntegrityError(f"{name}: truncated: the last chunk is shorter than its tag")
        return cls(header.size, header.chunk_size, count, last - TAG_SIZE)

    @property
    def stride(self) -> int:
        return self.chunk_size + TAG_SIZE

    @property
    def plaintext_size(self) -> int:
        return (self.count - 1) * self.chunk_size + self.last_plain

    def offset(self, index: int) -> int:
        """File offset of chunk ``index``."""
        return self.header_size + index * self.stride

    def stored_size(self, index: int) -> int:
        """Bytes chunk ``index`` occupies on disk (ciphertext and tag)."""
        return (self.last_plain if index == self.count - 1 else self.chunk_size) + TAG_SIZE


def nonce(index: int) -> bytes:
    # Each file has its own random data key, so a counter nonce never repeats under a key.
    return b"\x00\x00\x00\x00" + index.to_bytes(8, "big")


def chunk_aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


class ChunkCipher:
    """Seal and open the chunks of one file under its data key."""

    def __init__(self, data_key: bytes, header: Header) -> None:
        if len(data_key) != DEK_SIZE:
            raise ValueError(f"data key must be {DEK_SIZE} bytes, got {len(data_key)}")
        self._aead = AESGCM(data_key)
        self._digest = header.digest

    def seal(self, index: int, plaintext: bytes | memoryview, final: bool) -> bytes:
        return self._aead.encrypt(nonce(index), plaintext, chunk_aad(self._digest, index, final))

    def open(
        self, index: int, stored: bytes | memoryview, final: bool, name: str, count: int
    ) -> bytes:
        try:
            return self._aead.decrypt(nonce(index), stored, chunk_aad(self._digest, index, final))
        except InvalidTag:
            raise IntegrityError(
                f"{name}: chunk {index} of {count} failed authentication "
                "(modified, truncated, reordered or extended file, or wrong key)"
            ) from None
