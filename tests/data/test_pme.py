"""Parquet Modular Encryption under trusted-ml KEKs: pyarrow, Spark, and each other."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import APPS
from trustedml.data import _pme
from trustedml.data._keystore import KeyRing
from trustedml.errors import (
    ConfigError,
    IntegrityError,
    KeyNotFoundError,
    LaunchError,
    NotEncryptedError,
)
from trustedml.hazmat import keywrap
from trustedml.spark import _pme as spark_pme
from trustedml.spark._submit import spark_home

FOOTER = "footer-kek"
PII = "pii.kek_2"
APP = APPS / "pme_roundtrip.py"


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing({FOOTER: os.urandom(32), PII: os.urandom(32)})


@pytest.fixture(scope="module")
def marker() -> str:
    return "TMLMARKER" + secrets.token_hex(8)


def _table(marker: str) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(20), pa.int64()),
            "name": [f"{marker}-arrow-{i}" for i in range(20)],
            "score": [i / 8 for i in range(20)],
        }
    )


def _rows(table: pa.Table) -> list[list[object]]:
    return sorted([list(r.values()) for r in table.to_pylist()])


def _assert_encrypted(path: Path, marker: str, magic: bytes = b"PARE") -> None:
    data = path.read_bytes()
    assert data[:4] == magic, path
    assert data[-4:] == magic, path
    assert marker.encode() not in data, path


# pyarrow only ---------------------------------------------------------------


def test_marker_shows_in_plaintext_parquet(tmp_path: Path, marker: str) -> None:
    # Control for the checks below: compression alone does not hide the marker.
    pq.write_table(_table(marker), tmp_path / "plain.parquet")
    data = (tmp_path / "plain.parquet").read_bytes()
    assert data[-4:] == b"PAR1"
    assert marker.encode() in data


def test_uniform_round_trip(tmp_path: Path, ring: KeyRing, marker: str) -> None:
    path = tmp_path / "uniform.parquet"
    _pme.write_encrypted_parquet(_table(marker), path, keyring=ring, footer_key=FOOTER)
    _assert_encrypted(path, marker)
    assert _pme.read_encrypted_parquet(path, keyring=ring).equals(_table(marker))


@pytest.mark.parametrize("plaintext_footer", [False, True])
def test_column_keys_round_trip(
    tmp_path: Path, ring: KeyRing, marker: str, plaintext_footer: bool
) -> None:
    path = tmp_path / "columns.parquet"
    _pme.write_encrypted_parquet(
        _table(marker),
        path,
        keyring=ring,
        footer_key=FOOTER,
        column_keys={PII: ["name"]},
        plaintext_footer=plaintext_footer,
    )
    _assert_encrypted(path, marker, b"PAR1" if plaintext_footer else b"PARE")
    assert _pme.read_encrypted_parquet(path, keyring=ring).equals(_table(marker))
    # Plaintext columns read with the footer key alone.
    only_id = _pme.read_encrypted_parquet(path, keyring=ring.subset([FOOTER]), columns=["id"])
    assert only_id.column("id").to_pylist() == list(range(20))
    with pytest.raises(KeyNotFoundError, match=PII) as info:
        _pme.read_encrypted_parquet(path, keyring=ring.subset([FOOTER]))
    assert str(path) in str(info.value)


def test_wrapped_keys_use_the_keywrap_format(ring: KeyRing) -> None:
    client = _pme.kms_client(ring)
    dek = os.urandom(32)
    wrapped = client.wrap_key(dek, PII)
    assert isinstance(wrapped, str)
    raw = base64.b64decode(wrapped)
    assert raw[0] == keywrap.WRAP_VERSION
    assert len(raw) == 1 + 12 + 32 + 16
    assert keywrap.unwrap(ring._kek(PII), PII, raw) == dek
    assert client.unwrap_key(wrapped, PII) == dek
    # The key id is authenticated: a key wrapped for one id does not open as another.
    with pytest.raises(IntegrityError):
        client.unwrap_key(base64.b64encode(ring.wrap_key(FOOTER, dek)).decode(), PII)


def test_wrong_or_missing_key_names_the_file(tmp_path: Path, ring: KeyRing, marker: str) -> None:
    path = tmp_path / "secret.parquet"
    _pme.write_encrypted_parquet(_table(marker), path, keyring=ring, footer_key=FOOTER)
    wrong = KeyRing({FOOTER: os.urandom(32)})
    with pytest.raises(IntegrityError, match="cannot unwrap") as info:
        _pme.read_encrypted_parquet(path, keyring=wrong)
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, IntegrityError)
    with pytest.raises(KeyNotFoundError, match=FOOTER) as missing:
        _pme.read_encrypted_parquet(path, keyring=KeyRing({}))
    assert str(path) in str(missing.value)


def test_tampered_file_fails(tmp_path: Path, ring: KeyRing, marker: str) -> None:
    path = tmp_path / "tampered.parquet"
    _pme.write_encrypted_parquet(_table(marker), path, keyring=ring, footer_key=FOOTER)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01  # inside the encrypted column data
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as info:
        _pme.read_encrypted_parquet(path, keyring=ring)
    assert str(path) in str(info.value)


def test_plaintext_file_is_refused(tmp_path: Path, ring: KeyRing, marker: str) -> None:
    path = tmp_path / "plain.parquet"
    pq.write_table(_table(marker), path)
    with pytest.raises(NotEncryptedError, match="not an encrypted Parquet file"):
        _pme.read_encrypted_parquet(path, keyring=ring)


def test_write_checks_arguments_first(tmp_path: Path, ring: KeyRing, marker: str) -> None:
    path = tmp_path / "never.parquet"
    with pytest.raises(KeyNotFoundError, match="nope"):
        _pme.write_encrypted_parquet(_table(marker), path, keyring=ring, footer_key="nope")
    with pytest.raises(ConfigError, match="both"):
        _pme.write_encrypted_parquet(
            _table(marker),
            path,
            keyring=ring,
            footer_key=FOOTER,
            column_keys={FOOTER: ["name"], PII: ["name"]},
        )
    with pytest.raises(ConfigError, match="no column"):
        _pme.write_encrypted_parquet(
            _table(marker), path, keyring=ring, footer_key=FOOTER, column_keys={PII: ["nah"]}
        )
    assert not path.exists()


# Spark side, without Spark ----------------------------------------------------


def test_environment_carries_the_keks_and_conf_does_not(ring: KeyRing, tmp_path: Path) -> None:
    env = spark_pme.pme_environment(ring)
    assert list(env) == ["TRUSTEDML_KEYRING"]
    entries = dict(item.split(":", 1) for item in env["TRUSTEDML_KEYRING"].split(","))
    assert {k: base64.b64decode(v) for k, v in entries.items()} == {
        k: ring._kek(k) for k in ring.key_ids()
    }
    conf = spark_pme.pme_conf(tmp_path / "kms.jar")
    assert conf["spark.hadoop.parquet.encryption.double.wrapping"] == "false"
    for value in entries.values():
        assert value not in json.dumps(conf)


@pytest.fixture(scope="module")
def jar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return spark_pme.kms_client_jar(tmp_path_factory.mktemp("jars"))


def test_jar_is_cached(jar: Path) -> None:
    stamp = jar.stat().st_mtime_ns
    assert spark_pme.kms_client_jar(jar.parent) == jar
    assert jar.stat().st_mtime_ns == stamp
    assert [p.name for p in jar.parent.iterdir()] == [jar.name]


def test_missing_javac_is_a_launch_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(LaunchError, match="javac not found"):
        spark_pme.kms_client_jar(tmp_path / "cache")


def test_compile_error_is_a_launch_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "TrustedMLKmsClient.java"
    broken.write_text("package org.trustedml.parquet;\nclass Broken { int x = ; }\n")
    monkeypatch.setattr(spark_pme, "JAVA_SOURCE", broken)
    with pytest.raises(LaunchError, match="illegal start of expression"):
        spark_pme.kms_client_jar(tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())


# Real Spark -------------------------------------------------------------------


def _spark(
    args: list[str], keyring: KeyRing, jar: Path, cwd: Path
) -> subprocess.CompletedProcess[str]:
    scrubbed = ("PYSPARK_SUBMIT_ARGS", "SPARK_CONF_DIR", "_SPARK_AUTH_SECRET", "SPARK_HOME")
    env = {
        k: v for k, v in os.environ.items() if k not in scrubbed and not k.startswith("TRUSTEDML_")
    }
    env.update(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    env.update(PYSPARK_DRIVER_PYTHON=sys.executable)
    env.update(spark_pme.pme_environment(keyring))
    conf = {
        **spark_pme.pme_conf(jar),
        "spark.master": "local[2]",
        "spark.ui.enabled": "false",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
    }
    argv = [str(spark_home() / "bin" / "spark-submit")]
    for key, value in conf.items():
        argv += ["--conf", f"{key}={value}"]
    return subprocess.run(
        [*argv, str(APP), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


ABSENT = "absent-kek"


@pytest.fixture(scope="module")
def absent_ring() -> KeyRing:
    """The KEK of a file the Spark job cannot read: it is not in the job's ring."""
    return KeyRing({ABSENT: os.urandom(32)})


@pytest.fixture(scope="module")
def spark_roundtrip(
    tmp_path_factory: pytest.TempPathFactory,
    ring: KeyRing,
    absent_ring: KeyRing,
    jar: Path,
    marker: str,
) -> tuple[dict[str, list[list[object]]], Path, subprocess.CompletedProcess[str]]:
    """One Spark run: read a pyarrow-written file, write an encrypted dataset, then
    fail on a file under a KEK the job lacks."""
    tmp = tmp_path_factory.mktemp("pme-spark")
    source = tmp / "from-arrow.parquet"
    _pme.write_encrypted_parquet(_table(marker), source, keyring=ring, footer_key=FOOTER)
    unreadable = tmp / "absent-kek.parquet"
    _pme.write_encrypted_parquet(_table(marker), unreadable, keyring=absent_ring, footer_key=ABSENT)
    out = tmp / "from-spark"
    args = [str(source), str(out), marker, FOOTER, PII, str(unreadable)]
    done = _spark(args, ring, jar, tmp)
    found = re.search(r"^RESULT=(.*)$", done.stdout, re.MULTILINE)
    assert found, done.stdout[-3000:] + done.stderr[-5000:]
    result: dict[str, list[list[object]]] = json.loads(found.group(1))
    return result, out, done


@pytest.mark.spark
def test_spark_reads_pyarrow_file(
    spark_roundtrip: tuple[dict[str, list[list[object]]], Path, object], marker: str
) -> None:
    result, _, _ = spark_roundtrip
    assert result["read"] == _rows(_table(marker))


@pytest.mark.spark
def test_pyarrow_reads_spark_dataset(
    spark_roundtrip: tuple[dict[str, list[list[object]]], Path, object],
    ring: KeyRing,
    marker: str,
) -> None:
    result, out, _ = spark_roundtrip
    assert result["reread"] == result["written"]
    assert len(result["written"]) == 20
    parts = sorted(out.glob("part-*.parquet"))
    assert parts
    for part in parts:
        _assert_encrypted(part, marker)
    table = _pme.read_encrypted_parquet(out, keyring=ring)
    assert _rows(table) == result["written"]
    assert all(name.startswith(f"{marker}-spark-") for name in table.column("name").to_pylist())
    # The footer key alone opens the plaintext columns Spark wrote, not "name".
    footer_only = ring.subset([FOOTER])
    ids = _pme.read_encrypted_parquet(out, keyring=footer_only, columns=["id"])
    assert sorted(ids.column("id").to_pylist()) == list(range(20))
    with pytest.raises(KeyNotFoundError, match=PII):
        _pme.read_encrypted_parquet(out, keyring=footer_only)


@pytest.mark.spark
def test_spark_without_the_kek_fails_cleanly(
    spark_roundtrip: tuple[dict[str, list[list[object]]], Path, subprocess.CompletedProcess[str]],
    ring: KeyRing,
    absent_ring: KeyRing,
    marker: str,
) -> None:
    _, _, done = spark_roundtrip
    assert done.returncode != 0
    assert f"no key-encryption key '{ABSENT}'" in done.stderr
    # The marker is in the unreadable file: no row of it shows (the rows the job
    # printed as RESULT before are left out).
    before, _, after = done.stdout.partition("RESULT=")
    output = before + after.partition("\n")[2] + done.stderr
    assert marker not in output
    for value in [
        *spark_pme.pme_environment(absent_ring).values(),
        *spark_pme.pme_environment(ring).values(),
    ]:
        for entry in value.split(","):
            assert entry.split(":", 1)[1] not in output
