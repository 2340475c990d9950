"""The Spark parts of `python -m bench encrypted_io` and `python -m bench tpch` on tiny
inputs in the shared session: every encrypted read gives plain's answer (no timing is
asserted; the benchmarks themselves measure)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bench import _spark_io, _tpch, _wide, flights, tpch
from trustedml import KeyRing

pytestmark = pytest.mark.spark


def test_encrypted_io_reads_agree_with_plain(spark: Any, tmp_path: Path) -> None:
    ring = KeyRing({"bench": os.urandom(32)})
    table = flights.flights_table(4_000)
    inputs = _spark_io.prepare_inputs(table, tmp_path, ring, "bench")
    outcome = _spark_io.spark_benchmark(spark, inputs, ring, rounds=1, variants=("plain", "jvm"))
    assert outcome.failures == {}
    rows = {row["case"]: row for row in _spark_io.spark_summary(outcome)}
    assert set(rows) == {"csv", "parquet", "parquet_query"}
    for row in rows.values():
        assert row["ratio_jvm_over_plain"] > 0
        assert "python" not in row
    # The filtered query counts the flights of its month and no others.
    since = pa.scalar(_wide.SINCE, type=pa.timestamp("us"))
    june = pc.sum(pc.greater_equal(table["date"], since)).as_py()
    assert 0 < sum(r[1] for r in outcome.expected["parquet_query"]) == june < table.num_rows
    assert sum(r[1] for r in outcome.expected["csv"]) == table.num_rows


def test_tpch_answers_agree_over_tml_and_plain(spark: Any, tmp_path: Path) -> None:
    pytest.importorskip("duckdb_extension_tpch", reason="the bench extra")
    prepared = _tpch.prepare(0.01, tmp_path / "plain", (3,))
    ring = KeyRing({tpch.KEY_ID: os.urandom(32)})
    encrypted = tpch.encrypt_tables(prepared.files, tmp_path / "tml", ring)
    assert sorted(p.name for p in encrypted["orders"].iterdir()) == ["orders.parquet.tml"]
    paths = {"plain": prepared.files, "tml": encrypted}
    result = tpch.measure(spark, prepared, paths, ring, "jvm", rounds=1)
    (row,) = result["rows"]
    assert (row["query"], row["rows"]) == (3, 10)
    assert (row["tml_vs_plain"], row["plain_vs_duckdb"]) == (None, None)
    assert set(result["load_seconds"]) == {"plain", "tml"}
    assert result["best_geomean_ratio"] > 0
    # Only the tables Q3 names were read; their views are gone again.
    assert {t.name for t in spark.catalog.listTables()} & set(_tpch.TABLES) == set()
