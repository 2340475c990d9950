"""The JVM's tml:// file system on the shared secure session: the known-answer vector,
Python-written files read by Spark's own readers, Spark-written files read by Python,
names, integrity messages equal to Python's, and how keys reach (or do not reach) the JVM."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
from py4j.protocol import Py4JJavaError

# The broker fixtures live in tests/broker; imported so pytest finds them here.
from tests.broker.conftest import (  # noqa: F401
    Broker,
    base_config,
    broker,
    broker_keys,
    save_sim_private_key,
    sim_key,
)
from tests.broker.job_env import JOB_MEASUREMENT
from trustedml import KeyRing, Secret
from trustedml.data import DataKey, KeyStore, read_encrypted_bytes, write_encrypted_bytes
from trustedml.errors import IntegrityError
from trustedml.hazmat import framing
from trustedml.runtime import ExecutorKeyStore
from trustedml.spark._jvmfs import (
    AGENT_OPTION,
    FS_CLASS,
    KEY_ID_OPTION,
    LOG2_CHUNK_OPTION,
    agent_options,
    fs_conf,
    hand_keys,
    tml_uri,
    unavailable,
)

pytestmark = pytest.mark.spark

VECTORS = Path(__file__).resolve().parents[1] / "data" / "vectors"
RING = KeyRing({"kek-1": b"\x11" * 32, "other": b"\x22" * 32})
FILES = 4  # one per key: Spark's two task threads call back for keys at once
ROWS = 3000
SCHEMA = "id INT, name STRING, score DOUBLE"


class CountingStore:
    """A key ring that counts what the JVM asks of it (each key once per JVM)."""

    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring
        self._lock = threading.Lock()
        self.unwraps: list[str] = []
        self.threads: set[int] = set()

    def generate_data_key(self, key_id: str) -> DataKey:
        return self._ring.generate_data_key(key_id)

    def unwrap_data_key(self, key_id: str, wrapped: bytes) -> Secret:
        with self._lock:
            self.unwraps.append(key_id)
            self.threads.add(threading.get_ident())
        time.sleep(0.1)  # two tasks opening files at once overlap here
        return self._ring.unwrap_data_key(key_id, wrapped)

    def for_workers(self, key_ids: Collection[str]) -> KeyStore:
        self._ring.for_workers(key_ids)
        return self


def _rows(start: int) -> str:
    return "".join(f"{i},name-{i},{i * 0.5}\n" for i in range(start, start + ROWS))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jvmfs")
    shutil.copy(VECTORS / "format-v1.tml", root / "vector.txt.tml")
    (root / "csv").mkdir()
    for n in range(FILES):
        text = "id,name,score\n" + _rows(n * ROWS)
        # 4 KiB chunks: every file spans many chunks and Spark's lines cross them.
        write_encrypted_bytes(
            text.encode(), root / "csv" / f"part-{n}.csv.tml", key_id="kek-1",
            keystore=RING, log2_chunk=12,
        )  # fmt: skip
    return root


@pytest.fixture
def jvm(spark: Any) -> Iterator[Any]:
    yield spark._jvm
    spark._jvm.org.trustedml.fs.TmlKeys.clearCache()


def _fs(spark: Any, uri: str) -> Any:
    path = spark._jvm.org.apache.hadoop.fs.Path(uri)
    return path, path.getFileSystem(spark._jsc.hadoopConfiguration())


def _jvm_read(spark: Any, uri: str) -> bytes:
    path, fs = _fs(spark, uri)
    try:
        stream = fs.open(path)
        try:
            return bytes(spark._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()
    finally:
        fs.close()


def _java_message(exc: BaseException) -> str:
    """The message of the Java exception py4j reports (without the Java class name)."""
    return str(exc.java_exception.getMessage())  # type: ignore[attr-defined]


def test_the_session_carries_the_file_system(spark: Any) -> None:
    assert unavailable(spark) is None
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.hadoop.fs.tml.impl") == FS_CLASS
    assert conf.get("spark.hadoop.fs.tml.impl.disable.cache") == "true"
    assert any(Path(j).name.startswith("trustedml-fs-") for j in conf.get("spark.jars").split(","))
    assert tml_uri("/a/b.csv") == "tml:///a/b.csv"
    assert tml_uri(Path("rel")) == "tml://" + str(Path.cwd() / "rel")
    assert fs_conf(Path("/x/trustedml-fs-1.jar"))["spark.jars"] == "/x/trustedml-fs-1.jar"


def test_spark_reads_the_vector_and_python_written_csv(spark: Any, jvm: Any, data: Path) -> None:
    store = CountingStore(RING)
    jvm.org.trustedml.fs.TmlKeys.clearCache()
    assert hand_keys(spark, store, ["kek-1"]) == {}
    vector = spark.read.text(tml_uri(data / "vector.txt"), wholetext=True).first()[0]
    assert vector == (VECTORS / "format-v1.txt").read_text()
    # Named by its physical .tml name, a file is listed under that name (Spark's file
    # index would otherwise drop it and read nothing).
    same = spark.read.text(tml_uri(data / "vector.txt.tml"), wholetext=True).first()[0]
    assert same == vector

    df = spark.read.csv(tml_uri(data / "csv"), header=True, schema=SCHEMA)
    got = df.selectExpr("count(*)", "sum(id)", "max(name)", "max(score)").first()
    n = FILES * ROWS
    assert tuple(got) == (n, n * (n - 1) // 2, "name-9999", (n - 1) * 0.5)
    # The vector and each file unwrapped once; a second job uses the JVM's cache.
    assert len(store.unwraps) == 1 + FILES
    assert spark.read.csv(tml_uri(data / "csv"), header=True, schema=SCHEMA).count() == n
    assert len(store.unwraps) == 1 + FILES
    # Spark's task threads called back from several of py4j's server threads.
    assert len(store.threads) >= 2

    # Names without the suffix, plaintext lengths; the open file's stream seeks.
    path, fs = _fs(spark, tml_uri(data / "csv"))
    try:
        listed = {s.getPath().getName(): s.getLen() for s in fs.listStatus(path)}
        sizes = {
            f"part-{n}.csv": len(
                read_encrypted_bytes(data / "csv" / f"part-{n}.csv.tml", keystore=RING)
            )
            for n in range(FILES)
        }
        assert listed == sizes
        one = spark._jvm.org.apache.hadoop.fs.Path(tml_uri(data / "csv" / "part-2.csv"))
        assert fs.getFileStatus(one).getLen() == sizes["part-2.csv"]
        assert fs.exists(one)
        stream = fs.open(one)
        io = spark._jvm.org.apache.commons.io.IOUtils
        stream.seek(20_000)  # inside chunk 4
        positioned = bytes(io.toByteArray(stream, 10))
        assert stream.getPos() == 20_010
        stream.seek(4090)  # back, and on across a chunk boundary
        tail = bytes(io.toByteArray(stream))
        stream.close()
    finally:
        fs.close()
    plain = read_encrypted_bytes(data / "csv" / "part-2.csv.tml", keystore=RING)
    assert positioned == plain[20_000:20_010]
    assert tail == plain[4090:]


def test_spark_writes_files_python_reads(spark: Any, jvm: Any, tmp_path: Path) -> None:
    hand_keys(spark, RING, ["other"])
    df = spark.range(0, 5000, numPartitions=3).selectExpr("id", "concat('v', id) AS v")
    out = tmp_path / "out"
    opts = {KEY_ID_OPTION: "other", LOG2_CHUNK_OPTION: "12"}
    df.write.options(**opts).parquet(tml_uri(out / "p"))
    df.write.options(**opts).csv(tml_uri(out / "c"), header=True)

    names = sorted(os.listdir(out / "p"))
    assert names[0] == "_SUCCESS.tml"
    assert len(names) == 4
    assert all(n.endswith(".snappy.parquet.tml") for n in names[1:])
    for name in names + [f"../c/{n}" for n in os.listdir(out / "c")]:
        file = out / "p" / name
        assert file.stat().st_mode & 0o777 == 0o600
        head = framing.Header.parse(file.read_bytes()[: framing.MAX_HEADER_SIZE], str(file))
        assert (head.key_id, head.log2_chunk) == ("other", 12)
    assert read_encrypted_bytes(out / "p" / "_SUCCESS.tml", keystore=RING) == b""
    text = b"".join(
        read_encrypted_bytes(out / "c" / n, keystore=RING) for n in sorted(os.listdir(out / "c"))
    )
    assert text.count(b"id,v\n") == 3
    assert text.count(b"\n") == 5000 + 3
    assert b"4999,v4999\n" in text
    # No staging left behind; the JVM reads its own output.
    assert not (out / "p" / "_temporary").exists()
    back = spark.read.parquet(tml_uri(out / "p")).selectExpr("count(*)", "sum(id)").first()
    assert tuple(back) == (5000, 4999 * 5000 // 2)


def test_names_renames_and_refusals(spark: Any, jvm: Any, tmp_path: Path) -> None:
    hand_keys(spark, RING, ["kek-1"])
    (tmp_path / "d").mkdir()
    (tmp_path / "plain.csv").write_text("not encrypted\n")
    write_encrypted_bytes(b"hello", tmp_path / "a.txt.tml", key_id="kek-1", keystore=RING)
    Path_ = spark._jvm.org.apache.hadoop.fs.Path
    root, fs = _fs(spark, tml_uri(tmp_path))
    try:
        listed = {s.getPath().getName(): s.getLen() for s in fs.listStatus(root)}
        assert listed == {"a.txt": 5, "plain.csv": 14, "d": listed["d"]}
        # Asked for by its physical name, a .tml file is the same file.
        assert fs.getFileStatus(Path_(tml_uri(tmp_path / "a.txt.tml"))).getLen() == 5
        assert fs.rename(Path_(tml_uri(tmp_path / "a.txt")), Path_(tml_uri(tmp_path / "b.txt")))
        assert sorted(os.listdir(tmp_path)) == ["b.txt.tml", "d", "plain.csv"]
        assert fs.rename(Path_(tml_uri(tmp_path / "b.txt")), Path_(tml_uri(tmp_path / "d")))
        assert os.listdir(tmp_path / "d") == ["b.txt.tml"]
        assert not fs.rename(Path_(tml_uri(tmp_path / "nope")), Path_(tml_uri(tmp_path / "x")))
        assert _jvm_read(spark, tml_uri(tmp_path / "d" / "b.txt")) == b"hello"
        with pytest.raises(Py4JJavaError) as refused:
            fs.append(Path_(tml_uri(tmp_path / "d" / "b.txt")))
        assert "appending to a trusted-ml file is not supported" in str(refused.value)
        assert fs.delete(Path_(tml_uri(tmp_path / "d" / "b.txt")), False)
        assert os.listdir(tmp_path / "d") == []
        with pytest.raises(Py4JJavaError) as plain:
            _jvm_read(spark, tml_uri(tmp_path / "plain.csv"))
        assert _java_message(plain.value) == (
            f"{tmp_path / 'plain.csv'}: not a trusted-ml file (bad magic)"
        )
        # Writing without a key id names the option.
        with pytest.raises(Py4JJavaError) as no_id:
            fs.create(Path_(tml_uri(tmp_path / "new.txt"))).close()
        assert _java_message(no_id.value) == (
            f"{tmp_path / 'new.txt.tml'}: writing needs a key id (option trustedml.fs.keyId)"
        )
    finally:
        fs.close()


def test_without_keys_the_jvm_refuses(spark: Any, jvm: Any, data: Path) -> None:
    jvm.org.trustedml.fs.TmlKeys.uninstall()
    with pytest.raises(Py4JJavaError) as refused:
        _jvm_read(spark, tml_uri(data / "vector.txt"))
    assert _java_message(refused.value) == (
        f"{data / 'vector.txt.tml'}: no trusted-ml keys in this JVM (read and write through "
        "trustedml.spark.read_encrypted / write_encrypted, which hand the JVM the job's keys)"
    )
    # Handing keys again installs the source again; a key it was not given is refused.
    hand_keys(spark, KeyRing({"other": b"\x22" * 32}), ["other"])
    with pytest.raises(Py4JJavaError) as wrong:
        _jvm_read(spark, tml_uri(data / "vector.txt"))
    assert _java_message(wrong.value) == (
        f"{data / 'vector.txt.tml'}: key 'kek-1' was not handed to this JVM"
    )


def _corruptions(good: bytes) -> dict[str, bytes]:
    header = framing.Header.parse(good)
    at = header.size + 5000  # inside chunk 1
    return {
        "magic": b"X" + good[1:],
        "short header": good[:20],
        "version": good[:8] + b"\x02" + good[9:],
        "cipher": good[:9] + b"\x07" + good[10:],
        "chunk size": good[:10] + b"\x0b" + good[11:],
        "flags": good[:11] + b"\x01" + good[12:],
        "key id length": good[:28] + b"\x00" + good[29:],
        "wrapped length": good[: header.size - len(header.wrapped_key) - 2]
        + b"\x00\x00"
        + good[header.size - len(header.wrapped_key) :],
        "no chunk": good[: header.size + 10],
        "tampered chunk": good[:at] + bytes([good[at] ^ 1]) + good[at + 1 :],
        "truncated": good[: header.size + 2 * (4096 + 16)],
        "extended": good + good[header.size + 4096 + 16 : header.size + 2 * (4096 + 16)],
    }


def _python_error(path: Path) -> str:
    with pytest.raises(IntegrityError) as info:
        read_encrypted_bytes(path, keystore=RING)
    return str(info.value)


def test_integrity_failures_read_as_in_python(spark: Any, jvm: Any, tmp_path: Path) -> None:
    hand_keys(spark, RING, ["kek-1"])
    good = (VECTORS / "format-v1.tml").read_bytes()
    for label, bad in _corruptions(good).items():
        path = tmp_path / f"{label.replace(' ', '-')}.txt.tml"
        path.write_bytes(bad)
        with pytest.raises(Py4JJavaError) as info:
            _jvm_read(spark, tml_uri(path))
        assert _java_message(info.value) == _python_error(path), label
        assert "TmlIntegrityException" in str(getattr(info.value, "java_exception", "")), label


WORKER = bytes.fromhex("a1" * 48)  # the worker daemon's measurement


def _agents(spark: Any) -> list[str]:
    """The key agents the session's JVM runs."""
    jvm_pid = spark._jvm.java.lang.ProcessHandle.current().pid()
    found = subprocess.run(
        ["pgrep", "-P", str(jvm_pid), "-f", "trustedml._keyagent"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.split()


def test_a_jvm_without_a_source_starts_the_key_agent(
    spark: Any,
    jvm: Any,
    broker: Broker,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    """What a cluster executor does: no installed source, the agent descriptor in the
    options; the agent attests with the executor's own (worker's) evidence."""
    policy = {
        "allow_simulated": True,
        "allow": [
            {"type": "sim", "measurement": m.hex(), "job_measurement": JOB_MEASUREMENT.hex()}
            for m in (JOB_MEASUREMENT, WORKER)
        ],
    }
    key_id = broker.new_key(policy)
    owner = broker.client(JOB_MEASUREMENT, job_measurement=JOB_MEASUREMENT)
    (tmp_path / "in").mkdir()
    write_encrypted_bytes(
        b"a,b\n1,2\n3,4\n", tmp_path / "in" / "x.csv.tml", key_id=key_id, keystore=owner
    )
    # The environment an executor inherits from its worker: the worker's TEE (sim here).
    sim = save_sim_private_key(broker.sim_key, tmp_path / "sim.key")
    python = tmp_path / "executor-python"
    python.write_text(
        "#!/bin/sh\n"
        f"export TRUSTEDML_TEE=sim TRUSTEDML_JOB_MEASUREMENT={WORKER.hex()} "
        f"TRUSTEDML_SIM_KEY={sim} TRUSTEDML_WORKER=worker-1@127.0.0.1\n"
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o700)
    store = ExecutorKeyStore(broker.url, broker.ca.read_bytes(), JOB_MEASUREMENT, [key_id])
    opts = agent_options(store, str(python))
    assert json.loads(opts[AGENT_OPTION]) == {
        "url": broker.url,
        "ca": broker.ca.read_text(),
        "job_measurement": JOB_MEASUREMENT.hex(),
        "key_ids": [key_id],
    }
    jvm.org.trustedml.fs.TmlKeys.uninstall()
    try:
        rows = spark.read.options(**opts).csv(tml_uri(tmp_path / "in"), header=True).collect()
        assert sorted(tuple(r) for r in rows) == [("1", "2"), ("3", "4")]
        out = tmp_path / "out"
        spark.range(10).write.options(**opts, **{KEY_ID_OPTION: key_id}).csv(tml_uri(out))
        written = b"".join(
            read_encrypted_bytes(p, keystore=owner) for p in sorted(out.glob("part-*"))
        )
        assert sorted(written.split()) == sorted(str(i).encode() for i in range(10))
        assert len(_agents(spark)) == 1  # one per JVM, however many tasks asked
        attests = [
            e
            for e in broker.admin().audit(limit=1000)["entries"]
            if e["event"] == "attest" and e["details"].get("worker") == "worker-1@127.0.0.1"
        ]
        assert [(e["measurement"], e["outcome"]) for e in attests] == [(WORKER.hex(), "ok")]
    finally:
        jvm.org.trustedml.fs.TmlKeys.uninstall()  # stops the agent
    deadline = time.monotonic() + 10
    while _agents(spark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _agents(spark) == []
