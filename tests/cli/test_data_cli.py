from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import DATASETS, FAST_KDF, PASSPHRASE, run_cli
from trustedml import KeyDirectory, LocalKeyStore, Secret, encrypt_file, init_key_directory


@pytest.fixture(scope="module")
def keys(
    session_keys: KeyDirectory,
    session_passphrase_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> list[str]:
    path = tmp_path_factory.mktemp("data-cli") / "keys"
    shutil.copytree(session_keys.path, path)
    result = run_cli(
        ["keys", "new-kek", str(path), "taxi", "--passphrase-file", str(session_passphrase_file)]
    )
    assert result.returncode == 0, result.stderr
    return ["--keys", str(path), "--passphrase-file", str(session_passphrase_file)]


def _sample(tmp_path: Path) -> Path:
    src = DATASETS / "nyc_taxi.csv"
    if not src.is_file():
        src = tmp_path / "nyc_taxi.csv"
        src.write_text(
            "timestamp,value\n"
            + "".join(f"2014-07-01 00:{i % 60:02d}:00,{i}\n" for i in range(10320))
        )
    return src


def test_list_keks(keys: list[str]) -> None:
    result = run_cli(["keys", "list-keks", keys[1], *keys[2:]])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["taxi"]


def test_encrypt_decrypt_round_trip_json(keys: list[str], tmp_path: Path) -> None:
    src = _sample(tmp_path)
    enc, dec = tmp_path / "taxi.csv.tml", tmp_path / "taxi.csv"
    result = run_cli(["encrypt", str(src), str(enc), "--key-id", "taxi", "--json", *keys])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report[0]["plaintext_bytes"] == src.stat().st_size
    assert report[0]["key_id"] == "taxi"
    assert b"timestamp,value" not in enc.read_bytes()
    result = run_cli(["decrypt", str(enc), str(dec), *keys])
    assert result.returncode == 0, result.stderr
    assert dec.read_bytes() == src.read_bytes()


def test_tampered_file_one_line_error_and_no_output(keys: list[str], tmp_path: Path) -> None:
    src = _sample(tmp_path)
    enc = tmp_path / "t.tml"
    assert (
        run_cli(
            ["encrypt", str(src), str(enc), "--key-id", "taxi", "--chunk-size", "12", *keys]
        ).returncode
        == 0
    )
    blob = bytearray(enc.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    enc.write_bytes(bytes(blob))
    result = run_cli(["decrypt", str(enc), str(tmp_path / "out.csv"), *keys])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "t.tml: chunk " in lines[0]
    assert "failed authentication" in lines[0]
    assert not (tmp_path / "out.csv").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_plain_file_is_refused(keys: list[str], tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text("a,b\n")
    result = run_cli(["decrypt", str(plain), str(tmp_path / "o"), *keys])
    assert result.returncode == 1
    assert "plain.csv: not a trusted-ml file" in result.stderr


def test_unknown_key_id(keys: list[str], tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.write_text("x")
    result = run_cli(["encrypt", str(src), str(tmp_path / "a.tml"), "--key-id", "nope", *keys])
    assert result.returncode == 1
    assert "no key-encryption key 'nope'" in result.stderr
    assert not (tmp_path / "a.tml").exists()


def test_directory_mode(keys: list[str], tmp_path: Path) -> None:
    src = tmp_path / "ds"
    (src / "sub").mkdir(parents=True)
    (src / "one.txt").write_text("1")
    (src / "sub" / "two.txt").write_text("2")
    assert (
        run_cli(["encrypt", str(src), str(tmp_path / "enc"), "--key-id", "taxi", *keys]).returncode
        == 0
    )
    result = run_cli(["decrypt", str(tmp_path / "enc"), str(tmp_path / "dec"), "--json", *keys])
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 2
    assert (tmp_path / "dec" / "sub" / "two.txt").read_text() == "2"


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def _broken(blob: bytes, how: str) -> bytes:
    """``blob`` (an encrypted file of 4 chunks) damaged in one way."""
    if how == "chunk-tampered":
        return blob[:-1000] + bytes([blob[-1000] ^ 1]) + blob[-999:]
    if how == "wrapped-key-tampered":
        return blob[:40] + bytes([blob[40] ^ 1]) + blob[41:]
    if how == "truncated":
        return blob[:-100]
    if how == "header-truncated":
        return blob[:20]
    if how == "not-encrypted":
        return b"timestamp,value\n" * 50
    assert how == "empty"
    return b""


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("chunk-tampered", "chunk 2 of 4 failed authentication"),
        ("wrapped-key-tampered", "cannot unwrap the data key with key-encryption key 'taxi'"),
        ("truncated", "failed authentication"),
        ("header-truncated", "header truncated"),
        ("not-encrypted", "not a trusted-ml file"),
        ("empty", "not a trusted-ml file"),
    ],
)
def test_decrypt_errors_name_the_file(keys: list[str], tmp_path: Path, how: str, says: str) -> None:
    src = tmp_path / "plain.bin"
    src.write_bytes(os.urandom(3 * 4096 + 500))
    good = tmp_path / "good.tml"
    assert run_cli(["encrypt", str(src), str(good), "--key-id", "taxi", "--chunk-size", "12",
                    *keys]).returncode == 0  # fmt: skip
    bad = tmp_path / f"{how}.tml"
    bad.write_bytes(_broken(good.read_bytes(), how))
    out = tmp_path / "out.bin"
    line = _one_error_line(run_cli(["decrypt", str(bad), str(out), *keys]))
    assert line.startswith(f"error: {bad}: "), line
    assert says in line
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["plain.bin", "good.tml", bad.name])


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> LocalKeyStore:
    """Another key directory, with its own KEK of the same id ``taxi`` and a KEK ``other``."""
    path = tmp_path_factory.mktemp("other-keys") / "keys"
    store = LocalKeyStore(init_key_directory(path, Secret(PASSPHRASE), kdf=FAST_KDF),
                          Secret(PASSPHRASE))  # fmt: skip
    store.create_kek("taxi")
    store.create_kek("other")
    return store


@pytest.mark.parametrize(
    ("key_id", "says"),
    [
        ("taxi", "cannot unwrap the data key with key-encryption key 'taxi' (wrong key"),
        ("other", "no key-encryption key 'other'"),
    ],
)
def test_decrypt_with_the_wrong_keys_names_the_file(
    keys: list[str], other_keys: LocalKeyStore, tmp_path: Path, key_id: str, says: str
) -> None:
    src = tmp_path / "plain.csv"
    src.write_text("a,b\n1,2\n")
    enc = tmp_path / "theirs.csv.tml"
    encrypt_file(src, enc, key_id=key_id, keystore=other_keys)
    line = _one_error_line(run_cli(["decrypt", str(enc), str(tmp_path / "out.csv"), *keys]))
    assert line.startswith(f"error: {enc}: {says}"), line
    assert not (tmp_path / "out.csv").exists()


def test_decrypt_directory_with_one_bad_file_names_it_and_writes_nothing(
    keys: list[str], other_keys: LocalKeyStore, tmp_path: Path
) -> None:
    src = tmp_path / "ds"
    src.mkdir()
    for name in ("a.csv", "b.csv", "c.csv"):
        (src / name).write_text(f"{name}\n" * 1000)
    enc = tmp_path / "enc"
    assert run_cli(["encrypt", str(src), str(enc), "--key-id", "taxi", *keys]).returncode == 0
    # b: a file of another key directory's KEK 'taxi', in the middle of the walk.
    encrypt_file(src / "b.csv", enc / "b.csv.tml", key_id="taxi", keystore=other_keys)
    dec = tmp_path / "dec"
    line = _one_error_line(run_cli(["decrypt", str(enc), str(dec), *keys]))
    assert line.startswith(f"error: {enc / 'b.csv.tml'}: cannot unwrap the data key"), line
    assert not dec.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "enc"]


def test_encrypt_under_a_missing_kek_names_the_file(keys: list[str], tmp_path: Path) -> None:
    src = tmp_path / "a.csv"
    src.write_text("x\n")
    line = _one_error_line(
        run_cli(["encrypt", str(src), str(tmp_path / "a.csv.tml"), "--key-id", "nope", *keys])
    )
    assert line == f"error: {src}: no key-encryption key 'nope' in this key store"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]


def test_paths_that_look_like_markup_print_as_text(keys: list[str], tmp_path: Path) -> None:
    # "x[" / "bold]y.csv" reads "x[/bold]y.csv": rich once took it for a closing tag and
    # crashed after the file was written.
    (tmp_path / "x[").mkdir()
    src = tmp_path / "x[" / "bold]y.csv"
    src.write_bytes(_sample(tmp_path).read_bytes())
    enc = tmp_path / "x[" / "bold]y.csv.tml"
    result = run_cli(["encrypt", str(src), str(enc), "--key-id", "taxi", *keys])
    assert result.returncode == 0, result.stderr
    assert f"encrypted {src} -> {enc} (" in result.stderr.splitlines()[0]
