"""Streaming encryption: a chunked writer and a random-access, authenticating reader."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import IO, Any

from trustedml.data._keystore import DataKey, KeyStore
from trustedml.errors import ConfigError, IntegrityError, KeyStoreError, reworded
from trustedml.hazmat import framing
from trustedml.hazmat.framing import ChunkCipher, Header, Layout


class EncryptingWriter(io.RawIOBase):
    """Write plaintext, get a trusted-ml file: constant memory (one chunk).

    ``close()`` seals the final chunk; a writer that is never closed leaves a file
    that readers reject as truncated.
    """

    def __init__(
        self,
        raw: IO[bytes],
        data_key: DataKey,
        *,
        log2_chunk: int = framing.DEFAULT_LOG2_CHUNK,
        close_raw: bool = False,
    ) -> None:
        super().__init__()
        try:
            self.header = Header.build(data_key.key_id, data_key.wrapped, log2_chunk)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self._raw = raw
        self._close_raw = close_raw
        self._cipher = ChunkCipher(data_key.plaintext.reveal(), self.header)
        self._chunk = self.header.chunk_size
        self._buf = bytearray()
        self._held: memoryview | None = None
        self._index = 0
        self.plaintext_bytes = 0
        self.bytes_written = 0
        self._emit(self.header.raw)

    def _emit(self, data: bytes) -> None:
        self._raw.write(data)
        self.bytes_written += len(data)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.plaintext_bytes

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed EncryptingWriter")
        view = memoryview(data).cast("B")
        size = len(view)
        if not size:
            return 0
        self.plaintext_bytes += size
        chunk = self._chunk
        if self._held is not None:
            # More data follows the held-back chunk: it is not the last.
            self._seal(self._held, final=False)
            self._held = None
        if self._buf:
            take = min(chunk - len(self._buf), size)
            self._buf += view[:take]
            view = view[take:]
            if not view:
                return size
            self._seal(memoryview(self._buf), final=False)
            self._buf.clear()
        # Whole chunks straight from the caller's buffer (no copy), holding back the
        # last full one until more data proves it is not final.
        while len(view) > chunk:
            self._seal(view[:chunk], final=False)
            view = view[chunk:]
        if len(view) == chunk and isinstance(data, bytes):
            self._held = view  # immutable: safe to keep without copying
        else:
            self._buf += view
        return size

    def _seal(self, plaintext: memoryview, final: bool) -> None:
        with plaintext:
            self._emit(self._cipher.seal(self._index, plaintext, final=final))
        self._index += 1

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._held is not None:
                self._seal(self._held, final=True)
                self._held = None
            else:
                self._seal(memoryview(self._buf), final=True)
            self._buf.clear()
            self._raw.flush()
        finally:
            if self._close_raw:
                self._raw.close()
            super().close()

    @property
    def chunks(self) -> int:
        return self._index


class DecryptingReader(io.RawIOBase):
    """Random-access plaintext view of a trusted-ml file.

    Only authenticated chunks are ever returned. Seeking decrypts just the chunk
    that holds the position, so a reader can start anywhere (splits, Parquet footers).
    """

    def __init__(
        self,
        raw: IO[bytes],
        keystore: KeyStore,
        *,
        name: str = "input",
        close_raw: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self._raw = raw
        self._close_raw = close_raw
        raw.seek(0)
        self.header = Header.parse(raw.read(framing.MAX_HEADER_SIZE), name)
        size = raw.seek(0, os.SEEK_END)
        self.layout = Layout.of(self.header, size, name)
        try:
            key = keystore.unwrap_data_key(self.header.key_id, self.header.wrapped_key)
        except (IntegrityError, KeyStoreError) as exc:
            # The key store does not know which file the wrapped key came from.
            raise reworded(exc, f"{name}: {exc}") from exc
        self._cipher = ChunkCipher(key.reveal(), self.header)
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None
        self._view: memoryview | None = None

    @classmethod
    def from_bytes(
        cls, data: bytes, keystore: KeyStore, *, name: str = "input"
    ) -> DecryptingReader:
        """A reader over ciphertext already in memory; chunks decrypt without copies."""
        reader = cls(io.BytesIO(data), keystore, name=name)
        reader._view = memoryview(data)
        return reader

    @property
    def size(self) -> int:
        """Plaintext size in bytes."""
        return self.layout.plaintext_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def chunk(self, index: int) -> bytes:
        """The plaintext of chunk ``index`` (authenticated)."""
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        layout = self.layout
        if not 0 <= index < layout.count:
            raise IndexError(f"chunk {index} outside 0..{layout.count - 1}")
        want = layout.stored_size(index)
        stored: bytes | memoryview
        if self._view is not None:
            # In-memory ciphertext: decrypt straight from it, no copy.
            stored = self._view[layout.offset(index) : layout.offset(index) + want]
        else:
            self._raw.seek(layout.offset(index))
            stored = self._raw.read(want)
        if len(stored) != want:
            raise IntegrityError(f"{self.name}: chunk {index} is short (file changed while read)")
        plain = self._cipher.open(index, stored, index == layout.count - 1, self.name, layout.count)
        self._cached = (index, plain)
        return plain

    def iter_chunks(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """Plaintext of chunks ``start`` .. ``stop - 1``, in order."""
        stop = self.layout.count if stop is None else min(stop, self.layout.count)
        for index in range(start, stop):
            plain = self.chunk(index)
            self._cached = None  # streaming: no point keeping it
            yield plain

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        chunk_size = self.layout.chunk_size
        while done < len(view) and self._pos < self.size:
            index, offset = divmod(self._pos, chunk_size)
            plain = self.chunk(index)
            take = min(len(view) - done, len(plain) - offset)
            view[done : done + take] = plain[offset : offset + take]
            done += take
            self._pos += take
        return done

    def readall(self) -> bytes:
        parts = []
        while self._pos < self.size:
            index, offset = divmod(self._pos, self.layout.chunk_size)
            plain = self.chunk(index)
            parts.append(plain[offset:])
            self._pos += len(plain) - offset
        return b"".join(parts)

    def close(self) -> None:
        if self.closed:
            return
        self._cached = None
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._close_raw:
            self._raw.close()
        super().close()


def open_encrypted(path: str | os.PathLike[str], keystore: KeyStore) -> DecryptingReader:
    """Open an encrypted file for reading (random access, authenticated)."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the reader
    try:
        return DecryptingReader(raw, keystore, name=os.fspath(path), close_raw=True)
    except BaseException:
        raw.close()
        raise
