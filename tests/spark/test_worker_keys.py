"""One key path: job_keystore() -> read/write/register -> keystore.for_workers(ids) ->
Spark's Python workers, on the shared in-process secure session and a real broker."""

from __future__ import annotations

import csv
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The broker fixtures live in tests/broker; imported so pytest finds them here.
from tests.broker.conftest import (  # noqa: F401
    Broker,
    base_config,
    broker,
    broker_keys,
    sim_key,
    sim_policy,
)
from tests.broker.job_env import JOB_MEASUREMENT, job_environment
from trustedml import KeyRing, encrypt_file, read_encrypted_bytes
from trustedml.errors import BrokerRefusedError, KeyNotFoundError
from trustedml.runtime import ENV_BROKER_URL, AttestedKeyStore, job_keystore
from trustedml.spark import read_encrypted, write_encrypted

pytestmark = pytest.mark.spark

ROWS = [("alice", 31), ("bob", 27), ("carol", 45)]


@pytest.fixture
def job_broker(
    spark: Any, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Broker]:
    """The module's broker, with this process playing a job's driver against it. Spark
    starts first, so its Python workers do not inherit the job's environment."""
    running: Broker = request.getfixturevalue("broker")
    with job_environment(running, tmp_path, monkeypatch):
        yield running


def _plain_csv(path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "age"])
        writer.writerows(ROWS)
    return path


def test_a_brokered_job_keystore_decrypts_in_spark_workers(
    spark: Any, job_broker: Broker, tmp_path: Path
) -> None:
    from pyspark.sql import functions as F

    data, other = (job_broker.new_key(sim_policy(JOB_MEASUREMENT)) for _ in range(2))
    owner = job_broker.client(JOB_MEASUREMENT)  # the data owner encrypts with a broker key
    plain = _plain_csv(tmp_path / "people.csv")
    encrypted = tmp_path / "people.csv.tml"
    encrypt_file(plain, encrypted, key_id=data, keystore=owner)
    foreign = owner.generate_data_key(other)

    store = job_keystore()
    assert isinstance(store, AttestedKeyStore)
    # The driver's session covers both keys; the workers get only what they read.
    assert store.unwrap_data_key(other, foreign.wrapped) == foreign.plaintext
    # The Python data source: what its workers are handed is checked below.
    df = read_encrypted(
        spark, encrypted, "csv", keystore=store, header=True, inferSchema=True, engine="python"
    )
    assert sorted((r["name"], r["age"]) for r in df.collect()) == sorted(ROWS)
    # The tml file system: the driver JVM's keys come from the same attested session.
    jvm = read_encrypted(
        spark, encrypted, "csv", keystore=store, header=True, inferSchema=True, engine="jvm"
    )
    assert sorted((r["name"], r["age"]) for r in jvm.collect()) == sorted(ROWS)
    registered = spark._trustedml_keystore
    assert f"key_ids={[data]!r}" in repr(registered)
    assert f"key_ids={sorted([data, other])!r}" in repr(store.client.for_workers())

    workers = store.for_workers([data])
    assert f"key_ids={[data]!r}" in repr(pickle.loads(pickle.dumps(workers)))  # noqa: S301
    path, wrapped = str(encrypted), foreign.wrapped

    def decrypt_file(name: str) -> bytes:
        return read_encrypted_bytes(name, keystore=workers)

    decrypt = F.udf(decrypt_file, "binary", useArrow=False)
    decrypted = spark.createDataFrame([(path,)], ["path"]).select(decrypt("path")).first()[0]
    assert bytes(decrypted) == plain.read_bytes()

    def probe(_: Iterator[Any]) -> Iterator[tuple[str, str, str]]:
        try:
            workers.unwrap_data_key(other, wrapped)
            outcome = "released"
        except BrokerRefusedError as exc:
            outcome = f"{exc.code}: {exc}"
        yield repr(workers), os.environ.get(ENV_BROKER_URL, ""), outcome

    [(seen, env_url, outcome)] = (
        spark.sparkContext.parallelize([0], 1).mapPartitions(probe).collect()
    )
    assert f"key_ids={[data]!r}" in seen
    assert other not in seen
    assert env_url == ""  # the premise: this worker cannot attest on its own
    assert outcome.startswith("not_in_scope: ")
    assert "cannot attest itself" in outcome


def test_each_read_and_write_hands_the_workers_only_its_keys(spark: Any, tmp_path: Path) -> None:
    # What the Python data source ships to its workers (the JVM engine ships no key to
    # Python workers; its per-store key source is tested in tests/spark/test_jvm_matrix.py).
    python = {"engine": "python"}
    ring = KeyRing({"a": b"\x0a" * 32, "b": b"\x0b" * 32, "unused": b"\x0c" * 32})
    plain = _plain_csv(tmp_path / "people.csv")
    for key_id in "ab":
        encrypt_file(plain, tmp_path / f"{key_id}.csv.tml", key_id=key_id, keystore=ring)
    read_a = read_encrypted(
        spark, tmp_path / "a.csv.tml", "csv", keystore=ring, header=True, **python
    )
    assert spark._trustedml_keystore.key_ids() == ["a"]
    read_b = read_encrypted(
        spark, tmp_path / "b.csv.tml", "csv", keystore=ring, header=True, **python
    )
    assert spark._trustedml_keystore.key_ids() == ["b"]
    # A frame read under the earlier registration still runs with its own keys.
    assert read_a.count() == read_b.count() == len(ROWS)
    write_encrypted(read_a.select("name"), tmp_path / "out", "text", "b", keystore=ring, **python)
    assert spark._trustedml_keystore.key_ids() == ["b"]
    back = read_encrypted(spark, tmp_path / "out", "text", keystore=ring, **python)
    assert sorted(r.value for r in back.collect()) == sorted(name for name, _ in ROWS)


def test_a_key_the_store_lacks_fails_in_the_driver_naming_the_path(
    spark: Any, tmp_path: Path
) -> None:
    ring = KeyRing({"a": b"\x0a" * 32})
    plain = _plain_csv(tmp_path / "people.csv")
    encrypted = encrypt_file(plain, tmp_path / "p.csv.tml", key_id="a", keystore=ring).target
    lacking = KeyRing({"b": b"\x0b" * 32})
    with pytest.raises(KeyNotFoundError, match=r"p\.csv\.tml: no key-encryption key 'a'"):
        read_encrypted(spark, encrypted, "csv", keystore=lacking)
    df = spark.createDataFrame([("x",)], ["value"])
    with pytest.raises(KeyNotFoundError, match=r"/out: no key-encryption key 'a'"):
        write_encrypted(df, tmp_path / "out", "text", "a", keystore=lacking)
    assert not (tmp_path / "out").exists()
