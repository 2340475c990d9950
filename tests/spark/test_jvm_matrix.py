"""The JVM path (the ``tml`` file system) against the Python one, on the shared session:
interop both ways, the format matrix, every tamper case, commits and write modes."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trustedml import (
    ConfigError,
    EngineFallbackWarning,
    IntegrityError,
    KeyRing,
    decrypt_file,
    encrypt_file,
    read_encrypted_bytes,
)
from trustedml.hazmat import framing
from trustedml.spark import read_encrypted, write_encrypted

pytestmark = pytest.mark.spark

RING = KeyRing({"mx": b"\x5a" * 32})
LOG2 = 12  # 4 KiB chunks: small files still span many chunks
CHUNK = 1 << LOG2
CSV_SCHEMA = "id INT, name STRING, score DOUBLE"
RFC4180 = {"header": True, "escape": '"'}  # how Python's csv module quotes


@dataclass(frozen=True)
class Data:
    """Plaintext sources and their encrypted copies (made by ``encrypt_file``)."""

    root: Path
    rows: list[tuple[int, str, float | None]]
    lines: list[str]
    notes: list[tuple[str, str]]
    records: list[dict[str, Any]]
    nested: list[dict[str, Any]]

    def enc(self, name: str) -> Path:
        return self.root / f"{name}.tml"

    def plain(self, name: str) -> Path:
        return self.root / name


def _encrypt(src: Path, key_id: str = "mx", ring: KeyRing = RING) -> Path:
    dst = src.with_name(src.name + ".tml")
    encrypt_file(src, dst, key_id=key_id, keystore=ring, log2_chunk=LOG2)
    return dst


def _nested_table(n: int) -> Any:
    import pyarrow as pa

    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "s": pa.array(
                [{"a": i % 13, "b": f"b{i}"} for i in range(n)],
                pa.struct([("a", pa.int32()), ("b", pa.string())]),
            ),
            "arr": pa.array([list(range(i % 5)) for i in range(n)], pa.list_(pa.int32())),
            "m": pa.array([[(f"k{i % 3}", i)] for i in range(n)], pa.map_(pa.string(), pa.int64())),
        }
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("matrix")
    rows = [
        (i, ["plain", 'quote " and, comma', "ünïcode", ""][i % 4] + f"-{i}", i / 4 or None)
        for i in range(4000)
    ]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "name", "score"])
    writer.writerows((i, n, "" if s is None else s) for i, n, s in rows)
    root.joinpath("people.csv").write_text(buf.getvalue())
    lines = [("x" * (i % 97)) + f"-{i}" for i in range(6000)]  # ~300 KB, uneven lines
    root.joinpath("lines.txt").write_text("\n".join(lines) + "\n")
    notes = [("1", "first line\nsecond line"), ("2", "plain"), ("3", 'a "quoted", comma')]
    root.joinpath("notes.csv").write_text(
        'id,note\n1,"first line\nsecond line"\n2,plain\n3,"a ""quoted"", comma"\n'
    )
    records = [{"id": i, "tags": [f"t{i % 3}"], "who": {"n": f"n{i}"}} for i in range(500)]
    root.joinpath("rec.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    table = _nested_table(8000)
    pq.write_table(table, root / "nested.parquet", row_group_size=1600)
    assert pq.ParquetFile(root / "nested.parquet").metadata.num_row_groups == 5
    for name in ("people.csv", "lines.txt", "notes.csv", "rec.json", "nested.parquet"):
        _encrypt(root / name)
    nested = [{**r, "m": dict(r["m"])} for r in table.to_pylist()]
    return Data(root, rows, lines, notes, records, nested)


def _rows(df: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in df.collect()]


def _dicts(df: Any) -> list[dict[str, Any]]:
    return sorted((r.asDict(recursive=True) for r in df.collect()), key=lambda d: d["id"])


def _jvm(spark: Any, path: Path, fmt: str, **options: Any) -> Any:
    return read_encrypted(spark, path, fmt, keystore=RING, engine="jvm", **options)


@pytest.fixture
def small_splits(spark: Any) -> Iterator[int]:
    """Spark's split size cut to 40,000 bytes (not a multiple of the chunk size: splits
    start inside chunks) for the test, then restored."""
    keys = ("spark.sql.files.maxPartitionBytes", "spark.sql.files.openCostInBytes")
    before = {k: spark.conf.get(k, None) for k in keys}
    spark.conf.set(keys[0], "40000")
    spark.conf.set(keys[1], "0")
    try:
        yield 40_000
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


# -- Python-written files read by the JVM path ------------------------------------------


def test_files_encrypted_by_encrypt_file_read_by_jvm(spark: Any, data: Data) -> None:
    people = _jvm(spark, data.enc("people.csv"), "csv", schema=CSV_SCHEMA, **RFC4180)
    assert sorted(_rows(people)) == data.rows
    notes = _jvm(spark, data.enc("notes.csv"), "csv", multiLine=True, **RFC4180)
    assert sorted(_rows(notes)) == data.notes
    records = _jvm(spark, data.enc("rec.json"), "json")
    assert _dicts(records) == data.records
    lines = _jvm(spark, data.enc("lines.txt"), "text")
    assert [r.value for r in lines.collect()] == data.lines
    # Whole text: the decrypted file, byte for byte.
    (whole,) = _jvm(spark, data.enc("lines.txt"), "text", wholetext=True).collect()
    assert whole.value == data.plain("lines.txt").read_text()
    nested = _jvm(spark, data.enc("nested.parquet"), "parquet")
    assert [f.name for f in nested.schema.fields] == ["id", "s", "arr", "m"]
    assert _dicts(nested) == data.nested
    # Column pruning and a pushed-down filter on the decrypted Parquet.
    picked = nested.filter("id >= 7990").select("id", "s.b")
    assert _rows(picked) == [(i, f"b{i}") for i in range(7990, 8000)]


def test_python_writer_output_read_by_jvm(spark: Any, data: Data, tmp_path: Path) -> None:
    df = spark.createDataFrame(data.rows[:300], CSV_SCHEMA).repartition(2)
    write_encrypted(df, tmp_path / "c", "csv", "mx", keystore=RING, engine="python", header=True)
    write_encrypted(df, tmp_path / "p", "parquet", "mx", keystore=RING, engine="python")
    assert (tmp_path / "c" / "_SUCCESS").is_file()  # the Python writer's marker is plain
    back_csv = _jvm(spark, tmp_path / "c", "csv", header=True, schema=CSV_SCHEMA)
    back_parquet = _jvm(spark, tmp_path / "p", "parquet")
    assert sorted(_rows(back_csv)) == sorted(_rows(back_parquet)) == data.rows[:300]


def test_large_files_over_several_splits(spark: Any, data: Data, small_splits: int) -> None:
    lines = _jvm(spark, data.enc("lines.txt"), "text")
    assert lines.rdd.getNumPartitions() >= data.plain("lines.txt").stat().st_size // small_splits
    assert [r.value for r in lines.collect()] == data.lines  # every line once, in order
    people = _jvm(spark, data.enc("people.csv"), "csv", schema=CSV_SCHEMA, **RFC4180)
    assert people.rdd.getNumPartitions() > 1
    assert sorted(_rows(people)) == data.rows
    nested = _jvm(spark, data.enc("nested.parquet"), "parquet")
    assert nested.rdd.getNumPartitions() > 1
    assert _dicts(nested) == data.nested


# -- JVM-written files read by Python and by decrypt_file --------------------------------


def _one_part(directory: Path) -> Path:
    (part,) = directory.glob("part-*")
    return part


def test_jvm_writer_output_equals_sparks_plain_output(
    spark: Any, data: Data, tmp_path: Path
) -> None:
    flat = spark.createDataFrame(data.rows[:500], CSV_SCHEMA).coalesce(1)
    nested = spark.read.parquet(str(data.plain("nested.parquet"))).filter("id < 3000")
    nested = nested.coalesce(1)
    cases: list[tuple[str, Any, dict[str, Any]]] = [
        ("csv", flat, {"header": True}),
        ("json", nested, {}),
        ("text", flat.selectExpr("name AS value"), {}),
        ("parquet", nested, {}),
    ]
    for fmt, df, opts in cases:
        plain, enc = tmp_path / f"plain-{fmt}", tmp_path / f"enc-{fmt}"
        df.write.format(fmt).options(**opts).save(str(plain))
        write_encrypted(df, enc, fmt, "mx", keystore=RING, engine="jvm", **opts)
        part = _one_part(enc)
        assert part.name.endswith(_one_part(plain).suffix + ".tml"), part.name
        assert decrypt_file(part, tmp_path / f"{fmt}.out", keystore=RING).plaintext_bytes > 0
        assert (tmp_path / f"{fmt}.out").read_bytes() == _one_part(plain).read_bytes(), fmt
        assert read_encrypted_bytes(enc / "_SUCCESS.tml", keystore=RING) == b""
        if fmt in ("csv", "parquet"):  # the Python source reads lines, or row groups
            read_opts = {**opts, "schema": df.schema}
            back = read_encrypted(spark, enc, fmt, keystore=RING, engine="python", **read_opts)
            assert sorted(_rows(back), key=repr) == sorted(_rows(df), key=repr), fmt


# -- tampering: every case of the Python tests fails the Spark job, naming file and chunk --


def _chunks(blob: bytes) -> tuple[bytes, list[bytes]]:
    header = framing.Header.parse(blob)
    layout = framing.Layout.of(header, len(blob))
    parts = [
        blob[layout.offset(i) : layout.offset(i) + layout.stored_size(i)]
        for i in range(layout.count)
    ]
    return blob[: header.size], parts


def _flip(blob: bytes, pos: int) -> bytes:
    bad = bytearray(blob)
    bad[pos] ^= 0x40
    return bytes(bad)


@pytest.fixture(scope="module")
def tampered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Tampered copies of one five-chunk file: name -> (file, expected message)."""
    root = tmp_path_factory.mktemp("tamper")
    src = root / "rows.txt"
    src.write_bytes((b"row of private data\n" * 2000)[: 4 * CHUNK + 100])
    blob = _encrypt(src).read_bytes()
    other = root / "other.txt"
    other.write_bytes(os.urandom(4 * CHUNK + 100))
    head, parts = _chunks(blob)
    _, foreign = _chunks(_encrypt(other).read_bytes())
    fail = "failed authentication (modified, truncated, reordered or extended file, or wrong key)"
    cases = {
        "header-byte": (_flip(blob, 20), f"chunk 0 of 5 {fail}"),  # the file id
        "chunk-byte": (_flip(blob, len(head) + 2 * (CHUNK + 16) + 7), f"chunk 2 of 5 {fail}"),
        "tag": (_flip(blob, len(blob) - 1), f"chunk 4 of 5 {fail}"),
        "reorder": (head + b"".join([parts[0], parts[2], parts[1], *parts[3:]]), "chunk 1 of 5"),
        "drop-middle": (head + b"".join(parts[:2] + parts[3:]), f"chunk 2 of 4 {fail}"),
        "drop-last": (head + b"".join(parts[:-1]), f"chunk 3 of 4 {fail}"),
        "truncate-last": (blob[:-1], f"chunk 4 of 5 {fail}"),
        "append": (blob + foreign[-1], fail),
        "append-full": (head + b"".join([*parts[:-1], foreign[0], foreign[1]]), "chunk 4 of 6"),
        "splice": (head + b"".join([parts[0], foreign[1], *parts[2:]]), "chunk 1 of 5"),
        "not-encrypted": (src.read_bytes(), "not a trusted-ml file (bad magic)"),
    }
    out = {}
    for name, (content, message) in cases.items():
        path = root / f"{name}.txt.tml"
        path.write_bytes(content)
        out[name] = (path, message)
    wrong = root / "wrong-kek.txt"
    wrong.write_bytes(src.read_bytes())
    # Wrapped under another KEK with the same id: a file the JVM has never unwrapped.
    encrypted = _encrypt(wrong, ring=KeyRing({"mx": b"\x07" * 32}))
    out["wrong-kek"] = (encrypted, "cannot unwrap the data key with key-encryption key 'mx'")
    return out


TAMPER_CASES = [
    "header-byte",
    "chunk-byte",
    "tag",
    "reorder",
    "drop-middle",
    "drop-last",
    "truncate-last",
    "append",
    "append-full",
    "splice",
    "wrong-kek",
    "not-encrypted",
]


@pytest.mark.parametrize("case", TAMPER_CASES)
def test_tampered_file_fails_the_job_naming_file_and_chunk(
    spark: Any, tampered: dict[str, tuple[Path, str]], case: str
) -> None:
    path, message = tampered[case]
    expected = re.escape(f"{path}: ") + ".*" + re.escape(message)
    with pytest.raises(Exception, match=expected) as info:
        _jvm(spark, path, "text").collect()
    assert "private data" not in str(info.value)
    if case == "not-encrypted":
        # read_encrypted finds this in the driver (headers name the keys to hand over);
        # the file system itself refuses it too, in the task.
        with pytest.raises(Exception, match=expected):
            _raw_jvm(spark, path.parent, "text", prefix="not-encrypted").collect()


def _raw_jvm(spark: Any, directory: Path, fmt: str, prefix: str) -> Any:
    """Spark's reader straight on ``tml://`` (files whose names start with ``prefix``)."""
    from trustedml.spark._jvmfs import hand_keys, tml_uri

    options = {**hand_keys(spark, RING, ["mx"]), "pathGlobFilter": f"{prefix}*"}
    return spark.read.format(fmt).options(**options).load(tml_uri(directory))


def test_failed_job_commits_nothing(
    spark: Any, data: Data, tmp_path: Path, small_splits: int
) -> None:
    blob = data.enc("lines.txt").read_bytes()
    bad = tmp_path / "lines.txt.tml"
    bad.write_bytes(_flip(blob, len(blob) - 1))  # the last chunk: earlier splits succeed
    df = _jvm(spark, bad, "text")
    assert df.rdd.getNumPartitions() > 2
    out = tmp_path / "out"
    # Raised in the driver by write_encrypted's job: the reader's IntegrityError.
    with pytest.raises(IntegrityError, match=re.escape(f"{bad}: chunk ")):
        write_encrypted(df, out, "text", "mx", keystore=RING, engine="jvm")
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not [n for n in left if n.startswith(("part-", "_SUCCESS"))], left
    assert left == [], left  # the staging directory is gone too
    # Schema inference reads the file while read_encrypted plans: the same error there.
    with pytest.raises(IntegrityError, match=re.escape(f"{bad}: chunk ")):
        _jvm(spark, bad, "json")


# -- writing: modes, a fresh data key per file, 0600 -------------------------------------


def _parts(directory: Path) -> list[Path]:
    return sorted(directory.glob("part-*"))


def test_write_modes_fresh_keys_and_permissions(spark: Any, tmp_path: Path) -> None:
    df = spark.range(90).selectExpr("cast(id AS string) AS value").repartition(3)
    out = tmp_path / "t"
    write_encrypted(df, out, "text", "mx", keystore=RING, engine="jvm")
    first = _parts(out)
    assert len(first) == 3
    assert all(p.name.endswith(".txt.tml") for p in first)
    with pytest.raises(ConfigError, match="already exists"):
        write_encrypted(df, out, "text", "mx", keystore=RING, engine="jvm")
    write_encrypted(df.limit(1), out, "text", "mx", keystore=RING, engine="jvm", mode="ignore")
    assert _parts(out) == first
    write_encrypted(df, out, "text", "mx", keystore=RING, engine="jvm", mode="append")
    appended = _parts(out)
    assert len(appended) == 6
    back = read_encrypted(spark, out, "text", keystore=RING, engine="jvm")
    assert sorted(int(r.value) for r in back.collect()) == sorted(list(range(90)) * 2)
    files = [p for p in out.iterdir() if p.is_file()]
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}
    wrapped = [framing.Header.parse(p.read_bytes()).wrapped_key for p in files]
    assert len(set(wrapped)) == len(files) == 7  # six parts and _SUCCESS.tml
    five = spark.range(5).selectExpr("cast(id AS string) AS value").coalesce(1)
    write_encrypted(five, out, "text", "mx", keystore=RING, engine="jvm", mode="overwrite")
    assert len(_parts(out)) == 1
    assert not set(_parts(out)) & set(appended)
    assert read_encrypted(spark, out, "text", keystore=RING, engine="python").count() == 5


def test_engine_argument_is_checked(spark: Any, data: Data) -> None:
    path = data.enc("lines.txt")
    with pytest.raises(ConfigError, match="engine: expected one of auto, jvm, python"):
        read_encrypted(spark, path, "text", keystore=RING, engine="scala")
    with pytest.raises(ConfigError, match="splitBytes: an option of engine='python'"):
        read_encrypted(spark, path, "text", keystore=RING, engine="jvm", splitBytes=4096)


@contextmanager
def _without_the_tml_scheme(spark: Any) -> Iterator[None]:
    """The session's Hadoop configuration without ``fs.tml.impl``, as in a session
    started without the file system's jar, then restored."""
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    before = conf.get("fs.tml.impl")
    conf.unset("fs.tml.impl")
    try:
        yield
    finally:
        conf.set("fs.tml.impl", before)


def test_without_the_file_system_jvm_refuses_and_auto_falls_back(
    spark: Any, data: Data, tmp_path: Path
) -> None:
    path = data.enc("lines.txt")
    why = "the session was started without the trusted-ml file system jar"
    df = spark.createDataFrame([("a",), ("b",)], "value STRING")
    with _without_the_tml_scheme(spark):
        with pytest.raises(ConfigError, match=f"engine='jvm' is not available: {why}"):
            read_encrypted(spark, path, "text", keystore=RING, engine="jvm")
        with pytest.raises(ConfigError, match=f"engine='jvm' is not available: {why}"):
            write_encrypted(df, tmp_path / "w", "text", "mx", keystore=RING, engine="jvm")
        with pytest.warns(EngineFallbackWarning, match=f"Python data source.*: {why}") as got:
            lines = read_encrypted(spark, path, "text", keystore=RING)
        assert len(got) == 1
        assert [r.value for r in lines.collect()] == data.lines
        with pytest.warns(EngineFallbackWarning, match=why):
            write_encrypted(df, tmp_path / "w", "text", "mx", keystore=RING)
    assert (tmp_path / "w" / "_SUCCESS").is_file()  # the Python writer's plain marker


def test_a_key_store_without_the_key_cannot_read_what_another_unwrapped(
    spark: Any, tmp_path: Path
) -> None:
    src = tmp_path / "k.txt"
    src.write_text("only for the right key\n")
    enc = _encrypt(src)
    assert _jvm(spark, enc, "text").count() == 1  # the JVM has unwrapped this file's key
    wrong = KeyRing({"mx": b"\x07" * 32})
    with pytest.raises(Exception, match="cannot unwrap the data key"):
        read_encrypted(spark, enc, "text", keystore=wrong, engine="jvm").collect()
