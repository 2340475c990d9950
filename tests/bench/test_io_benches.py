"""encrypted_io and tpch without a JVM: options, summaries, tables, the file part end
to end (tests/spark/test_bench_reads.py runs their Spark parts in the shared session)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from bench import _file_io, _spark_io, _tpch, _wide, encrypted_io, flights, tpch
from tests.conftest import ROOT
from trustedml import KeyRing


def _bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False,
    )  # fmt: skip


def test_tpch_is_listed() -> None:
    result = _bench()
    assert result.returncode == 0
    assert "tpch" in result.stdout
    assert "encrypted_io" in result.stdout


def test_wide_table_adds_twenty_columns_and_is_repeatable() -> None:
    base = flights.flights_table(5_000)
    wide = _wide.wide_table(base)
    assert wide.num_columns == 25
    assert wide.column_names[:5] == list(flights.COLUMNS)
    assert wide.equals(_wide.wide_table(base))
    # Spark's Arrow conversion takes no unsigned integers.
    assert {str(wide.schema.field(n).type) for n in _wide.EXTRA} == {"int64", "double", "string"}
    assert max(wide["i01"].to_pylist()) < 10_000
    assert len(set(wide["s01"].to_pylist())) <= len(_wide.VOCABULARY)


def test_file_part_round_trips_and_summarises(tmp_path: Path) -> None:
    ring = KeyRing({"k": bytes(32)})
    runs = _file_io.file_benchmark(tmp_path, 1, 1, ring, "k")
    assert {r.op for r in runs} == {
        "encrypt_stream", "copy", "encrypt_file", "decrypt_file", "decrypt_stream",
    }  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # the inputs and outputs are removed
    rows, ceiling = _file_io.file_summary([100.0], [200.0], runs)
    assert rows[0]["operation"] == "raw AESGCM.encrypt"
    assert 0 < ceiling["encrypt_serial_bound_ratio"] < 1


def test_each_variant_takes_each_place_in_turn() -> None:
    orders = [_spark_io._order(i) for i in range(3)]
    for place in range(3):
        assert {order[place] for order in orders} == set(_spark_io.VARIANTS)


def test_answers_compare_floats_with_a_tolerance_and_the_rest_exactly() -> None:
    want = [("A", 3, 1.0), ("B", 1, 2.0)]
    assert _spark_io.differences(want, [("A", 3, 1.0 + 1e-12), ("B", 1, 2.0)]) == []
    assert _spark_io.differences(want, [("A", 4, 1.0), ("B", 1, 2.0)]) == [
        "expected ('A', 3, 1.0), got ('A', 4, 1.0)"
    ]
    assert _spark_io.differences(want, want[:1]) == ["2 rows vs 1 rows"]


def _run(case: str, variant: str, round_: int, load: float, action: float) -> _spark_io.SparkRun:
    return _spark_io.SparkRun(round_, case, variant, load, action)


def test_spark_summary_ratios_goal_and_failures() -> None:
    outcome = _spark_io.SparkOutcome(
        runs=[
            _run("csv", "plain", 0, 9.0, 9.0),  # the warm-up: not in the medians
            _run("csv", "plain", 1, 0.5, 1.5),
            _run("csv", "plain", 2, 0.5, 2.5),
            _run("csv", "jvm", 1, 0.5, 1.6),
            _run("csv", "jvm", 2, 0.5, 2.6),
            _run("csv", "python", 1, 1.0, 3.0),
            _run("parquet", "plain", 1, 0.1, 0.9),
            _run("parquet", "jvm", 1, 0.1, 1.4),
        ],
        failures={"parquet/python": "boom", "parquet_query": "plain failed"},
    )
    rows = {row["case"]: row for row in _spark_io.spark_summary(outcome)}
    csv = rows["csv"]
    assert csv["plain"] == {
        "load_seconds": 0.5, "action_seconds": 2.0, "total_seconds": 2.5, "best_total_seconds": 2.0,
    }  # fmt: skip
    assert csv["best_ratio_jvm_over_plain"] == pytest.approx(2.1 / 2.0)
    assert csv["ratio_jvm_over_plain"] == pytest.approx(2.6 / 2.5)
    assert csv["action_ratio_jvm_over_plain"] == pytest.approx(2.1 / 2.0)
    assert csv["ratio_python_over_plain"] == pytest.approx(4.0 / 2.5)
    assert (csv["goal_met"], csv["moonshot_met"]) == (True, True)
    parquet = rows["parquet"]
    assert parquet["ratio_jvm_over_plain"] == pytest.approx(1.5)
    assert (parquet["goal_met"], parquet["python_failed"]) == (False, "boom")
    assert "python" not in parquet
    assert rows["parquet_query"]["goal_met"] is None
    assert rows["parquet_query"]["plain_failed"] == "plain failed"


def test_variants_option_needs_plain() -> None:
    assert encrypted_io._variants("plain,jvm") == ("plain", "jvm")
    for bad in ("jvm,python", "plain,rust"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected plain and any of"):
            encrypted_io._variants(bad)


def test_tpch_summary_leaves_out_the_warm_up() -> None:
    timings = [
        tpch.Timing(3, "plain", 0, 50.0),
        tpch.Timing(3, "plain", 1, 2.0),
        tpch.Timing(3, "tml", 1, 2.2),
        tpch.Timing(3, "tml", 0, 50.0),
    ]
    timed = ((t.query, t.variant, t.seconds) for t in timings if t.round > 0)
    answers = {"plain": {3: [["A", 1.0]]}, "tml": {3: [["A", 1.5]]}}
    (row,) = _tpch.summarise(timed, answers, {3: [["A", 1.0]]}, "tml", "plain")
    assert row["ratio"] == pytest.approx(1.1)
    assert row["tml_vs_plain"] == "sorted row 0, column 2: 1.5 vs 1.0"
    assert row["plain_vs_duckdb"] is None
    with pytest.raises(SystemExit):
        tpch._parser().parse_args(["--scale", "0"])


def test_file_part_end_to_end_writes_its_json(tmp_path: Path) -> None:
    result = _bench(
        "encrypted_io", "--part", "file", "--size-mb", "1", "--raw-mib", "1", "--rounds", "1",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "encrypted_io 1/1: file throughput" in result.stdout
    payload = json.loads((tmp_path / "encrypted_io.json").read_text(encoding="utf-8"))
    assert payload["settings"]["parts"] == ["file"]
    assert [r["operation"] for r in payload["rows"]][:2] == [
        "raw AESGCM.encrypt", "encrypt stream (no disk)",
    ]  # fmt: skip


def test_spark_table_shows_every_case_and_variant(capsys: pytest.CaptureFixture[str]) -> None:
    outcome = _spark_io.SparkOutcome(
        runs=[_run("csv", "plain", 1, 0.5, 1.5), _run("csv", "jvm", 1, 0.5, 1.6)],
        failures={"csv/python": "boom"},
    )
    _spark_io.print_spark_table(_spark_io.spark_summary(outcome), "t")
    cells = {
        line.split("│")[1].strip(): line
        for line in capsys.readouterr().out.splitlines()
        if line.count("│") > 2
    }
    assert "1.050" in cells["csv jvm"]
    assert "FAILED" in cells["csv python"]
    assert "not run" in cells["parquet jvm"]


def test_tpch_table_and_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    args = tpch._parser().parse_args(["--scale", "0.01"])
    answers = {"plain": {3: [["A", 1.0]]}, "tml": {3: [["A", 1.0]]}}
    rows = _tpch.summarise([(3, "plain", 2.0), (3, "tml", 2.1)], answers, {3: []}, "tml", "plain")
    tpch._print(args, rows, 1.05)
    out = capsys.readouterr().out
    assert "geometric mean tml/plain: 1.050 (meets the goal <= 1.15)" in out
    assert "Q3: Spark's answer differs from duckdb's: 1 rows vs 0" in out


def test_encrypted_inputs_are_the_plain_file_plus_tml_alone_in_a_directory(tmp_path: Path) -> None:
    ring = KeyRing({"k": bytes(32)})
    table: pa.Table = flights.flights_table(500)
    inputs = _spark_io.prepare_inputs(table, tmp_path, ring, "k")
    for case in _spark_io.CASES:
        paths = inputs.paths[case.name]
        (encrypted,) = paths["encrypted"].iterdir()
        assert encrypted.name == paths["plain"].name + ".tml"
        assert encrypted.read_bytes()[:4] != paths["plain"].read_bytes()[:4]
    assert inputs.wide_columns == 25
