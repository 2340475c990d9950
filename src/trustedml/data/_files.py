"""Whole-file recipes: encrypt or decrypt a file or a directory tree, leaving no partial output."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trustedml._progress import NoProgress, Progress
from trustedml.data._keystore import DataKey, KeyStore, check_key_id
from trustedml.data._streams import DecryptingReader, EncryptingWriter
from trustedml.errors import ConfigError, KeyNotFoundError, KeyStoreError, reworded
from trustedml.hazmat import framing

SUFFIX = ".tml"
_IO_BLOCK = 1 << 20


@dataclass(frozen=True)
class FileResult:
    """What one encrypt or decrypt did."""

    source: Path
    target: Path
    plaintext_bytes: int
    ciphertext_bytes: int
    chunks: int
    key_id: str


@contextlib.contextmanager
def _atomic_output(target: Path) -> Iterator[Path]:
    """A temporary file beside ``target``, renamed onto it only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    os.chmod(tmp, 0o600)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _data_key_for(path: Path, key_id: str, keystore: KeyStore) -> DataKey:
    """A fresh data key for encrypting ``path``; a refusal names the file."""
    try:
        return keystore.generate_data_key(key_id)
    except (KeyStoreError, KeyNotFoundError) as exc:
        raise reworded(exc, f"{path}: {exc}") from exc


def _check_pair(source: Path, target: Path) -> None:
    if not source.is_file():
        raise ConfigError(f"{source}: expected an existing file")
    if target.exists() and target.resolve() == source.resolve():
        raise ConfigError(f"{target}: output would overwrite the input")


def encrypt_file(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    key_id: str,
    keystore: KeyStore,
    log2_chunk: int = framing.DEFAULT_LOG2_CHUNK,
    progress: Progress | None = None,
) -> FileResult:
    """Encrypt ``source`` into ``target`` under a fresh data key wrapped by ``key_id``.

    ``target`` appears only when complete (temporary file, then rename).
    """
    src, dst = Path(source), Path(target)
    _check_pair(src, dst)
    check_key_id(key_id)
    progress = progress or NoProgress()
    data_key = _data_key_for(src, key_id, keystore)
    progress.start(f"encrypt {src.name}", src.stat().st_size)
    try:
        with _atomic_output(dst) as tmp, src.open("rb") as fin, tmp.open("wb") as fout:
            writer = EncryptingWriter(fout, data_key, log2_chunk=log2_chunk)
            while block := fin.read(_IO_BLOCK):
                writer.write(block)
                progress.advance(len(block))
            writer.close()
            os.fsync(fout.fileno())
    finally:
        progress.finish()
    return FileResult(src, dst, writer.plaintext_bytes, writer.bytes_written, writer.chunks, key_id)


def decrypt_file(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    keystore: KeyStore,
    progress: Progress | None = None,
) -> FileResult:
    """Decrypt ``source`` into ``target``, verifying every chunk.

    Any failure (tampering, truncation, wrong key) raises :class:`IntegrityError`
    and leaves no ``target`` and no partial plaintext behind.
    """
    src, dst = Path(source), Path(target)
    _check_pair(src, dst)
    progress = progress or NoProgress()
    with src.open("rb") as fin:
        reader = DecryptingReader(fin, keystore, name=str(src))
        progress.start(f"decrypt {src.name}", reader.size)
        try:
            with _atomic_output(dst) as tmp, tmp.open("wb") as fout:
                for plain in reader.iter_chunks():
                    fout.write(plain)
                    progress.advance(len(plain))
                fout.flush()
                os.fsync(fout.fileno())
        finally:
            progress.finish()
        return FileResult(
            src,
            dst,
            reader.size,
            src.stat().st_size,
            reader.layout.count,
            reader.header.key_id,
        )


def _walk(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def encrypt_path(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    key_id: str,
    keystore: KeyStore,
    log2_chunk: int = framing.DEFAULT_LOG2_CHUNK,
    progress: Progress | None = None,
) -> list[FileResult]:
    """Encrypt a file, or every file under a directory (adding ``.tml``)."""
    src, dst = Path(source), Path(target)
    if not src.is_dir():
        return [encrypt_file(src, dst, key_id=key_id, keystore=keystore,
                             log2_chunk=log2_chunk, progress=progress)]  # fmt: skip
    return [
        encrypt_file(
            f,
            dst / (str(f.relative_to(src)) + SUFFIX),
            key_id=key_id,
            keystore=keystore,
            log2_chunk=log2_chunk,
            progress=progress,
        )
        for f in _walk(src)
    ]


def decrypt_path(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    keystore: KeyStore,
    progress: Progress | None = None,
) -> list[FileResult]:
    """Decrypt a file, or every ``.tml`` file under a directory (dropping ``.tml``).

    In directory mode every file is checked before anything is written: one bad file
    fails the whole call with no output.
    """
    src, dst = Path(source), Path(target)
    if not src.is_dir():
        return [decrypt_file(src, dst, keystore=keystore, progress=progress)]
    files = [f for f in _walk(src) if f.name.endswith(SUFFIX)]
    if not files:
        raise ConfigError(f"{src}: no {SUFFIX} files to decrypt")
    # Staged beside the target, so the final renames stay on one filesystem.
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.decrypt-"))
    try:
        results = []
        for f in files:
            rel = str(f.relative_to(src))[: -len(SUFFIX)]
            results.append(decrypt_file(f, staging / rel, keystore=keystore, progress=progress))
        dst.mkdir(parents=True, exist_ok=True)
        final = []
        for r in results:
            out = dst / r.target.relative_to(staging)
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(r.target, out)
            final.append(FileResult(r.source, out, r.plaintext_bytes, r.ciphertext_bytes,
                                    r.chunks, r.key_id))  # fmt: skip
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_encrypted_bytes(
    data: bytes,
    target: str | os.PathLike[str],
    *,
    key_id: str,
    keystore: KeyStore,
    log2_chunk: int = framing.DEFAULT_LOG2_CHUNK,
) -> FileResult:
    """Encrypt in-memory ``data`` (a model, a result) into ``target``, atomically."""
    dst = Path(target)
    check_key_id(key_id)
    data_key = _data_key_for(dst, key_id, keystore)
    with _atomic_output(dst) as tmp, tmp.open("wb") as fout:
        writer = EncryptingWriter(fout, data_key, log2_chunk=log2_chunk)
        writer.write(data)
        writer.close()
        os.fsync(fout.fileno())
    return FileResult(
        Path("<memory>"), dst, writer.plaintext_bytes, writer.bytes_written, writer.chunks, key_id
    )


def read_encrypted_bytes(source: str | os.PathLike[str], *, keystore: KeyStore) -> bytes:
    """Decrypt a whole file into memory; raises IntegrityError on any mismatch."""
    data = Path(source).read_bytes()
    with DecryptingReader.from_bytes(data, keystore, name=str(source)) as reader:
        return reader.readall()
