from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from trustedml import (
    ConfigError,
    IntegrityError,
    KeyNotFoundError,
    KeyRing,
    NotEncryptedError,
    decrypt_file,
    decrypt_path,
    encrypt_file,
    encrypt_path,
    open_encrypted,
)

RING = KeyRing({"k": b"\x05" * 32})
OTHER = KeyRing({"k": b"\x06" * 32})


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def start(self, description: str, total: int | None) -> None:
        self.events.append(("start", total))

    def advance(self, amount: int) -> None:
        self.events.append(("advance", amount))

    def finish(self) -> None:
        self.events.append(("finish", None))


def test_file_round_trip_with_progress(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    data = os.urandom(3 * (1 << 20) + 11)
    src.write_bytes(data)
    rec = Recorder()
    res = encrypt_file(src, tmp_path / "in.csv.tml", key_id="k", keystore=RING, progress=rec)
    assert res.plaintext_bytes == len(data)
    assert res.chunks == 4
    assert rec.events[0] == ("start", len(data))
    assert sum(n for e, n in rec.events if e == "advance") == len(data)  # type: ignore[misc]
    assert data[:64] not in res.target.read_bytes()
    out = decrypt_file(res.target, tmp_path / "out.csv", keystore=RING)
    assert out.target.read_bytes() == data
    assert stat.S_IMODE(out.target.stat().st_mode) == 0o600
    with open_encrypted(res.target, RING) as reader:
        assert reader.size == len(data)
        reader.seek(2 * (1 << 20) - 3)
        assert reader.read(6) == data[2 * (1 << 20) - 3 : 2 * (1 << 20) + 3]


def _no_leftovers(directory: Path, expected: set[str]) -> None:
    assert {p.name for p in directory.iterdir()} == expected


def test_tampered_file_leaves_no_output(tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(3 * 4096 + 5))
    enc = tmp_path / "in.bin.tml"
    encrypt_file(src, enc, key_id="k", keystore=RING, log2_chunk=12)
    blob = bytearray(enc.read_bytes())
    blob[-1] ^= 1  # the last chunk's tag: every earlier chunk decrypts fine first
    enc.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match=r"in.bin.tml: chunk 3 of 4 failed authentication"):
        decrypt_file(enc, tmp_path / "out.bin", keystore=RING)
    _no_leftovers(tmp_path, {"in.bin", "in.bin.tml"})


def test_wrong_key_leaves_no_output(tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.write_bytes(b"rows")
    encrypt_file(src, tmp_path / "a.tml", key_id="k", keystore=RING)
    with pytest.raises(IntegrityError, match=r"^.*/a\.tml: cannot unwrap the data key"):
        decrypt_file(tmp_path / "a.tml", tmp_path / "out", keystore=OTHER)
    _no_leftovers(tmp_path, {"a", "a.tml"})


def test_missing_kek_names_the_file(tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.write_bytes(b"rows")
    with pytest.raises(KeyNotFoundError, match=r"^.*/a: no key-encryption key 'absent'"):
        encrypt_file(src, tmp_path / "a.tml", key_id="absent", keystore=RING)
    encrypt_file(src, tmp_path / "a.tml", key_id="k", keystore=RING)
    with pytest.raises(KeyNotFoundError, match=r"^.*/a\.tml: no key-encryption key 'k'"):
        decrypt_file(tmp_path / "a.tml", tmp_path / "out", keystore=KeyRing({"j": b"\x07" * 32}))
    _no_leftovers(tmp_path, {"a", "a.tml"})


def test_plain_file_is_not_decrypted(tmp_path: Path) -> None:
    src = tmp_path / "plain.csv"
    src.write_text("a,b\n1,2\n")
    with pytest.raises(NotEncryptedError, match=r"plain.csv: not a trusted-ml file"):
        decrypt_file(src, tmp_path / "out", keystore=RING)
    _no_leftovers(tmp_path, {"plain.csv"})


def test_refuses_to_overwrite_input(tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.write_bytes(b"x")
    with pytest.raises(ConfigError, match="would overwrite the input"):
        encrypt_file(src, src, key_id="k", keystore=RING)
    with pytest.raises(ConfigError, match="expected an existing file"):
        encrypt_file(tmp_path / "missing", tmp_path / "o", key_id="k", keystore=RING)


def test_directory_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "ds"
    (src / "year=2024").mkdir(parents=True)
    (src / "a.csv").write_text("1\n")
    (src / "year=2024" / "b.csv").write_text("2\n")
    (src / ".hidden").write_text("skip")
    results = encrypt_path(src, tmp_path / "enc", key_id="k", keystore=RING)
    assert sorted(str(r.target.relative_to(tmp_path / "enc")) for r in results) == [
        "a.csv.tml",
        "year=2024/b.csv.tml",
    ]
    back = decrypt_path(tmp_path / "enc", tmp_path / "dec", keystore=RING)
    assert len(back) == 2
    assert (tmp_path / "dec" / "year=2024" / "b.csv").read_text() == "2\n"


def test_directory_with_one_bad_file_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "ds"
    src.mkdir()
    for name in ("a", "b", "c"):
        (src / name).write_bytes(os.urandom(100))
    encrypt_path(src, tmp_path / "enc", key_id="k", keystore=RING)
    bad = tmp_path / "enc" / "c.tml"
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(IntegrityError, match=r"c\.tml"):
        decrypt_path(tmp_path / "enc", tmp_path / "dec", keystore=RING)
    assert not (tmp_path / "dec").exists()
    _no_leftovers(tmp_path, {"ds", "enc"})


VECTORS = Path(__file__).parent / "vectors"


def test_known_answer_vector(tmp_path: Path) -> None:
    ring = KeyRing({"kek-1": b"\x11" * 32})
    out = decrypt_file(VECTORS / "format-v1.tml", tmp_path / "out", keystore=ring)
    assert out.target.read_bytes() == (VECTORS / "format-v1.txt").read_bytes()
    assert out.chunks == 3
    assert out.key_id == "kek-1"


def test_bytes_round_trip_and_wrong_key(tmp_path: Path) -> None:
    from trustedml import read_encrypted_bytes, write_encrypted_bytes

    model = os.urandom(70_000)
    res = write_encrypted_bytes(model, tmp_path / "m.pt.tml", key_id="k", keystore=RING)
    assert res.plaintext_bytes == len(model)
    assert read_encrypted_bytes(res.target, keystore=RING) == model
    with pytest.raises(IntegrityError, match=r"m\.pt\.tml: cannot unwrap"):
        read_encrypted_bytes(res.target, keystore=OTHER)
