"""encrypted_io part 1: trusted-ml file encryption and decryption against raw
AES-256-GCM on one core (in memory, and as files with fsync next to a plain copy)."""

from __future__ import annotations

import filecmp
import io
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench._report import print_table
from trustedml import (
    DecryptingReader,
    EncryptingWriter,
    KeyRing,
    decrypt_file,
    encrypt_file,
)
from trustedml.hazmat import framing

MIB = 1 << 20
# The file format's default chunk: raw AES-GCM is measured on buffers of this size.
CHUNK = 1 << framing.DEFAULT_LOG2_CHUNK
# Raw AES-GCM: best of RAW_REPEATS passes, each over --raw-mib MiB of 1 MiB buffers.
RAW_REPEATS = 5
RAW_MIB = 128
# The format binds a 41-byte AAD into every chunk (header digest, index, final flag).
AAD_SIZE = 32 + 8 + 1
FILE_GOAL = 0.70  # trusted-ml MiB/s over raw AES-GCM MiB/s: at least this


class BenchError(Exception):
    """The benchmark cannot go on (its message says why)."""


@dataclass(frozen=True)
class FileRun:
    round: int
    op: str
    seconds: float
    mib_per_s: float


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def raw_aesgcm(mib: int, repeats: int) -> tuple[list[float], list[float]]:
    """MiB/s of ``AESGCM.encrypt`` and ``decrypt`` over ``mib`` MiB in 1 MiB buffers.

    Encryption reuses one plaintext buffer, as the stream benchmark writes one block
    again and again. Decryption goes through ``mib`` MiB of distinct ciphertext laid
    out in one buffer, as a file in memory is: decrypting one cache-hot buffer again
    and again would be a baseline no reader of real data can reach.
    """
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    buf = os.urandom(CHUNK)
    aad = os.urandom(AAD_SIZE)
    nonces = [framing.nonce(i) for i in range(mib * MIB // CHUNK)]
    stored = b"".join(aead.encrypt(n, buf, aad) for n in nonces)
    view = memoryview(stored)
    width = len(stored) // len(nonces)
    encrypt_rates, decrypt_rates = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for n in nonces:
            aead.encrypt(n, buf, aad)
        encrypt_rates.append(mib / (time.perf_counter() - start))
        start = time.perf_counter()
        for i, n in enumerate(nonces):
            aead.decrypt(n, view[i * width : (i + 1) * width], aad)
        decrypt_rates.append(mib / (time.perf_counter() - start))
    return encrypt_rates, decrypt_rates


def _write_random(path: Path, mib: int) -> None:
    with path.open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(MIB))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_synced(src: Path, dst: Path) -> None:
    # encrypt_file and decrypt_file fsync their output; so does the I/O reference.
    shutil.copyfile(src, dst)
    _fsync(dst)


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(memoryview(data))


def _encrypt_stream(mib: int, ring: KeyRing, key_id: str) -> None:
    block = os.urandom(MIB)
    writer = EncryptingWriter(cast("IO[bytes]", _Discard()), ring.generate_data_key(key_id))
    for _ in range(mib):
        writer.write(block)
    writer.close()


def _decrypt_stream(blob: bytes, ring: KeyRing) -> None:
    # The ciphertext is already in memory: the timing is the format's work only.
    reader = DecryptingReader.from_bytes(blob, ring)
    for _ in reader.iter_chunks():
        pass


def file_benchmark(root: Path, mib: int, rounds: int, ring: KeyRing, key_id: str) -> list[FileRun]:
    src, copy = root / "random.bin", root / "random.copy"
    enc, dec = root / "random.bin.tml", root / "random.decrypted"
    log(f"writing {mib} MiB of random data")
    _write_random(src, mib)
    size = src.stat().st_size
    ciphertext = [b""]
    ops: dict[str, tuple[Path, Callable[[], object]]] = {
        # The format's own cost, without the disk: what the >= 0.70 goal is about.
        "encrypt_stream": (root / "none-e", lambda: _encrypt_stream(mib, ring, key_id)),
        "copy": (copy, lambda: _copy_synced(src, copy)),
        "encrypt_file": (enc, lambda: encrypt_file(src, enc, key_id=key_id, keystore=ring)),
        "decrypt_file": (dec, lambda: decrypt_file(enc, dec, keystore=ring)),
        "decrypt_stream": (root / "none-d", lambda: _decrypt_stream(ciphertext[0], ring)),
    }
    runs: list[FileRun] = []
    for i in range(rounds):
        # decrypt_file reads what encrypt_file wrote in the same round.
        for op, (target, action) in ops.items():
            target.unlink(missing_ok=True)
            if op == "decrypt_stream":
                ciphertext[0] = enc.read_bytes()
            start = time.perf_counter()
            action()
            seconds = time.perf_counter() - start
            run = FileRun(i + 1, op, seconds, size / MIB / seconds)
            runs.append(run)
            log(f"round {run.round}/{rounds} {op:<12} {seconds:6.2f} s {run.mib_per_s:7.0f} MiB/s")
    if not filecmp.cmp(src, dec, shallow=False):
        raise BenchError(f"{dec} differs from {src} after encrypt_file + decrypt_file")
    for path in (src, copy, enc, dec):
        path.unlink(missing_ok=True)
    return runs


def met(value: float, goal: float, at_least: bool) -> bool:
    return value >= goal if at_least else value <= goal


def yes_no(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "NO")


def file_summary(
    raw_encrypt: Sequence[float], raw_decrypt: Sequence[float], runs: Sequence[FileRun]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Table rows, and the I/O ceiling: how fast a copy alone goes relative to raw AES."""

    def median_rate(op: str) -> float:
        return statistics.median(r.mib_per_s for r in runs if r.op == op)

    raw = {"encrypt": max(raw_encrypt), "decrypt": max(raw_decrypt)}
    copy = median_rate("copy")
    rows: list[dict[str, Any]] = []
    for kind in ("encrypt", "decrypt"):
        rows.append(
            {
                "part": "file",
                "operation": f"raw AESGCM.{kind}",
                "mib_per_s": raw[kind],
                "ratio_vs_raw": 1.0,
                "goal": None,
                "goal_met": None,
            }
        )
        rate = median_rate(f"{kind}_stream")
        rows.append(
            {
                "part": "file",
                "operation": f"{kind} stream (no disk)",
                "mib_per_s": rate,
                "ratio_vs_raw": rate / raw[kind],
                "goal": {"ratio_vs_raw_at_least": FILE_GOAL},
                "goal_met": met(rate / raw[kind], FILE_GOAL, at_least=True),
            }
        )
        rate = median_rate(f"{kind}_file")
        rows.append(
            {
                "part": "file",
                "operation": f"{kind}_file (+fsync)",
                "mib_per_s": rate,
                "ratio_vs_raw": rate / raw[kind],
                "ratio_vs_copy": rate / copy,
                "goal": None,
                "goal_met": None,
            }
        )
    rows.append(
        {
            "part": "file",
            "operation": "copyfile + fsync",
            "mib_per_s": copy,
            "ratio_vs_raw": None,
            "goal": None,
            "goal_met": None,
        }
    )
    ceiling = {
        # A file operation that did its AES and its I/O one after the other, at the
        # measured speeds of each, could reach at best this fraction of raw AES-GCM.
        f"{kind}_serial_bound_ratio": (1 / (1 / raw[kind] + 1 / copy)) / raw[kind]
        for kind in ("encrypt", "decrypt")
    }
    ceiling["copy_over_raw_encrypt"] = copy / raw["encrypt"]
    return rows, ceiling


def print_file_table(rows: Sequence[dict[str, Any]], ceiling: dict[str, float], title: str) -> None:
    print_table(
        title,
        ("operation", "MiB/s", "/ raw", "/ copy", "goal", "met"),
        [
            (
                row["operation"],
                f"{row['mib_per_s']:.0f}",
                "" if row["ratio_vs_raw"] is None else f"{row['ratio_vs_raw']:.3f}",
                f"{row['ratio_vs_copy']:.3f}" if "ratio_vs_copy" in row else "",
                "" if row["goal"] is None else f">= {FILE_GOAL:.2f}",
                yes_no(row["goal_met"]),
            )
            for row in rows
        ],
    )
    print(
        f"I/O ceiling: copyfile + fsync alone runs at {ceiling['copy_over_raw_encrypt']:.3f}"
        " of raw encrypt; AES then I/O with no overlap would reach at most"
        f" {ceiling['encrypt_serial_bound_ratio']:.3f} (encrypt) and"
        f" {ceiling['decrypt_serial_bound_ratio']:.3f} (decrypt) of raw"
    )
