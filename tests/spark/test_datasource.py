"""Encrypted datasets through Spark, on a real in-process secure session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATASETS
from trustedml import KeyRing, encrypt_file
from trustedml.spark import read_encrypted, read_encrypted_pandas, write_encrypted

pytestmark = pytest.mark.spark

RING = KeyRing({"ds": b"\x42" * 32})
SPLIT_BYTES = 32 << 20  # read_encrypted's default splitBytes


def _encrypt(src: Path, dst: Path, log2: int = 20) -> Path:
    encrypt_file(src, dst, key_id="ds", keystore=RING, log2_chunk=log2)
    return dst


def _sorted_rows(df: Any) -> list[tuple[Any, ...]]:
    return sorted((tuple(r) for r in df.collect()), key=repr)


def test_text_lines_split_across_chunks_read_exactly_once(spark: Any, tmp_path: Path) -> None:
    lines = [("x" * (i % 97)) + f"-{i}" for i in range(3000)]  # ~150 KB of uneven lines
    src = tmp_path / "lines.txt"
    src.write_text("\n".join(lines) + "\n")
    enc = _encrypt(src, tmp_path / "lines.txt.tml", log2=12)  # 4 KiB chunks: ~37 chunks
    df = read_encrypted(spark, enc, "text", keystore=RING, splitBytes=4096 * 3)
    assert df.rdd.getNumPartitions() > 4
    assert df.columns == ["value"]
    got = [r.value for r in df.collect()]
    assert sorted(got) == sorted(lines)


def test_nyc_taxi_csv_matches_plaintext(spark: Any, tmp_path: Path) -> None:
    src = DATASETS / "nyc_taxi.csv"
    enc = _encrypt(src, tmp_path / "nyc_taxi.csv.tml", log2=14)  # several chunks
    plain = spark.read.csv(str(src), header=True, inferSchema=True)
    secret = read_encrypted(spark, enc, "csv", keystore=RING, header=True, inferSchema=True,
                            splitBytes=1 << 15)  # fmt: skip
    assert secret.rdd.getNumPartitions() > 1
    assert secret.schema == plain.schema
    assert secret.count() == plain.count() == 10320
    assert secret.groupBy().sum("value").first()[0] == plain.groupBy().sum("value").first()[0]
    assert _sorted_rows(secret) == _sorted_rows(plain)


def test_multiline_csv(spark: Any, tmp_path: Path) -> None:
    src = tmp_path / "notes.csv"
    src.write_text(
        'id,note\n1,"first line\nsecond line"\n2,plain\n3,"quote \\" inside, and comma"\n'
    )
    enc = _encrypt(src, tmp_path / "notes.csv.tml")
    opts = {"header": True, "multiLine": True}
    plain = spark.read.options(**opts).csv(str(src))
    secret = read_encrypted(spark, enc, "csv", keystore=RING, **opts)
    assert _sorted_rows(secret) == _sorted_rows(plain)
    assert ("1", "first line\nsecond line") in _sorted_rows(secret)


def test_csv_with_explicit_schema(spark: Any, tmp_path: Path) -> None:
    src = tmp_path / "s.csv"
    src.write_text("a;b\n1;x\n2;y\n")
    enc = _encrypt(src, tmp_path / "s.csv.tml")
    df = read_encrypted(spark, enc, "csv", keystore=RING, header=True, sep=";",
                        schema="a INT, b STRING")  # fmt: skip
    assert df.dtypes == [("a", "int"), ("b", "string")]
    assert _sorted_rows(df) == [(1, "x"), (2, "y")]


def test_json_lines_and_multiline_json(spark: Any, tmp_path: Path) -> None:
    lines = tmp_path / "p.json"
    lines.write_text('{"name":"Justin","age":19}\n{"name":"Andy","age":30}\n')
    doc = tmp_path / "doc.json"
    doc.write_text('[\n {"name": "Justin",\n  "age": 19},\n {"name": "Andy", "age": 30}\n]\n')
    a = read_encrypted(spark, _encrypt(lines, tmp_path / "p.json.tml"), "json", keystore=RING)
    b = read_encrypted(spark, _encrypt(doc, tmp_path / "doc.json.tml"), "json", keystore=RING,
                       multiLine=True)  # fmt: skip
    assert _sorted_rows(a) == _sorted_rows(b) == [(19, "Justin"), (30, "Andy")]


def test_parquet_file_encrypted_at_rest(spark: Any, tmp_path: Path) -> None:
    plain_dir = tmp_path / "plain.parquet"
    spark.range(0, 5000).selectExpr("id", "id * 2 AS twice", "cast(id AS string) AS s") \
        .coalesce(1).write.parquet(str(plain_dir))  # fmt: skip
    (src,) = plain_dir.glob("*.parquet")
    enc = _encrypt(src, tmp_path / "data.parquet.tml", log2=12)
    df = read_encrypted(spark, enc, "parquet", keystore=RING)
    assert df.dtypes == [("id", "bigint"), ("twice", "bigint"), ("s", "string")]
    assert df.count() == 5000
    assert df.groupBy().sum("twice").first()[0] == 2 * sum(range(5000))


def test_parquet_with_arrow_only_types(spark: Any, tmp_path: Path) -> None:
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "name": pa.array(["a", "b"], pa.large_string()),
            "n": pa.array([1, 2], pa.int16()),
            "at": pa.array([dt.datetime(2001, 1, 1), dt.datetime(2001, 1, 2)], pa.timestamp("ms")),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    enc = _encrypt(tmp_path / "t.parquet", tmp_path / "t.parquet.tml")
    df = read_encrypted(spark, enc, "parquet", keystore=RING)
    plain = spark.read.parquet(str(tmp_path / "t.parquet"))
    assert _sorted_rows(df) == _sorted_rows(plain)


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet", "text"])
def test_write_then_read_returns_the_same_dataframe(spark: Any, tmp_path: Path, fmt: str) -> None:
    if fmt == "text":
        df = spark.createDataFrame([("a",), ("b, with comma",), ("ünïcode",)], "value STRING")
    else:
        df = spark.createDataFrame(
            [(1, "x", 1.5), (2, 'quote " and, comma', None), (3, None, -2.0)],
            "id INT, name STRING, score DOUBLE",
        ).repartition(2)
    out = tmp_path / f"out-{fmt}"
    opts: dict[str, Any] = {"header": True} if fmt == "csv" else {}
    write_encrypted(df, out, fmt, "ds", keystore=RING, **opts)
    files = sorted(p.name for p in out.iterdir())
    assert {"_SUCCESS", "_SUCCESS.tml"} & set(files)  # the Python or the JVM writer's marker
    assert all(f.endswith(".tml") for f in files if not f.startswith("_"))
    for f in out.glob("*.tml"):
        assert b"comma" not in f.read_bytes()
    read_opts: dict[str, Any] = {"schema": df.schema} if fmt in ("csv", "json") else {}
    if fmt == "csv":
        read_opts["header"] = True
    back = read_encrypted(spark, out, fmt, keystore=RING, **read_opts)
    assert _sorted_rows(back) == _sorted_rows(df)


def test_write_modes(spark: Any, tmp_path: Path) -> None:
    from trustedml import ConfigError

    df = spark.range(3).selectExpr("cast(id AS string) AS value")
    out = tmp_path / "t"
    write_encrypted(df, out, "text", "ds", keystore=RING)
    with pytest.raises(ConfigError, match="already exists"):
        write_encrypted(df, out, "text", "ds", keystore=RING)
    write_encrypted(df, out, "text", "ds", keystore=RING, mode="append")
    assert read_encrypted(spark, out, "text", keystore=RING).count() == 6
    write_encrypted(df, out, "text", "ds", keystore=RING, mode="overwrite")
    assert read_encrypted(spark, out, "text", keystore=RING).count() == 3


def test_pandas_on_spark(spark: Any, tmp_path: Path) -> None:
    from trustedml.spark import write_encrypted_pandas

    src = tmp_path / "t.csv"
    src.write_text("k,v\na,1\nb,2\na,3\n")
    psdf = read_encrypted_pandas(spark, _encrypt(src, tmp_path / "t.csv.tml"), "csv",
                                 keystore=RING, header=True, inferSchema=True)  # fmt: skip
    assert psdf.groupby("k")["v"].sum().sort_index().to_dict() == {"a": 4, "b": 2}
    write_encrypted_pandas(psdf[psdf.v > 1], tmp_path / "out", "csv", "ds", keystore=RING,
                           header=True)  # fmt: skip
    back = read_encrypted(spark, tmp_path / "out", "csv", keystore=RING, header=True,
                          inferSchema=True)  # fmt: skip
    assert _sorted_rows(back) == [("a", 3), ("b", 2)]


def test_wrong_key_fails_cleanly(spark: Any, tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text("secret line\n")
    enc = _encrypt(src, tmp_path / "a.txt.tml")
    with pytest.raises(Exception, match="cannot unwrap the data key") as info:
        read_encrypted(spark, enc, "text", keystore=KeyRing({"ds": os.urandom(32)})).collect()
    assert "secret line" not in str(info.value)


def test_tampered_chunk_fails_cleanly(spark: Any, tmp_path: Path) -> None:
    src = tmp_path / "b.txt"
    src.write_text("row\n" * 5000)
    enc = _encrypt(src, tmp_path / "b.txt.tml", log2=12)
    blob = bytearray(enc.read_bytes())
    blob[-100] ^= 1
    enc.write_bytes(bytes(blob))
    with pytest.raises(Exception, match=r"b\.txt\.tml: chunk 4 of 5 failed authentication"):
        read_encrypted(spark, enc, "text", keystore=RING).collect()


def test_flights_csv_over_two_default_splits_matches_plaintext(spark: Any, tmp_path: Path) -> None:
    import pyarrow.csv as pacsv
    from bench.flights import flights_table

    # The benchmarks' seeded table, cut to the rows that pass the default split size
    # (32 MiB): default 1 MiB chunks and splits, lines across both, no options given.
    src = tmp_path / "flights.csv"
    pacsv.write_csv(flights_table(800_000), src)
    enc = _encrypt(src, tmp_path / "flights.csv.tml")
    src_size = src.stat().st_size
    assert src_size > SPLIT_BYTES
    plain = spark.read.csv(str(src), header=True, inferSchema=True)
    # The Python source's default split size is what this checks (the JVM's are Spark's).
    secret = read_encrypted(spark, enc, "csv", keystore=RING, header=True, schema=plain.schema,
                            engine="python")  # fmt: skip
    assert secret.rdd.getNumPartitions() == -(-src_size // SPLIT_BYTES) >= 2
    aggs = ["count(*)", "sum(delay)", "sum(distance)", "count(DISTINCT origin)"]
    assert secret.selectExpr(*aggs).first() == plain.selectExpr(*aggs).first()
    assert plain.count() == 800_000


def test_empty_partitions_and_row_group_splits(spark: Any, tmp_path: Path) -> None:
    df = (
        spark.range(0, 300_000, numPartitions=3)
        .selectExpr("id", "id % 7 AS k")
        .filter("id < 150000")
    )
    out = tmp_path / "p"
    write_encrypted(df, out, "parquet", "ds", keystore=RING)  # the third partition is empty
    back = read_encrypted(spark, out, "parquet", keystore=RING, splitBytes=1)
    assert back.count() == 150_000
    assert back.rdd.getNumPartitions() >= 2
