from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import DATASETS, run_cli
from trustedml import KeyDirectory


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
