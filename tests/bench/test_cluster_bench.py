"""The cluster benchmark's TPC-H pieces without a JVM: duckdb's query texts adapted to
Spark SQL, answer comparison, the summary; the benchmark itself runs with
`python -m bench cluster`."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from bench import _tpch, cluster
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def duckdb_tpch() -> None:
    """Skips unless the bench extra (duckdb and its packaged tpch extension) is installed."""
    for name in ("duckdb", "duckdb_extension_tpch"):
        pytest.importorskip(name, reason="the bench extra: pip install -e '.[bench]'")


@pytest.fixture(scope="module")
def texts(duckdb_tpch: None) -> dict[int, str]:
    con = _tpch.connect()
    try:
        return _tpch.query_texts(con)
    finally:
        con.close()


def test_extension_loads_from_the_package_with_autoload_off(texts: dict[int, str]) -> None:
    assert sorted(texts) == list(_tpch.QUERIES)
    assert _tpch.extension_path().name == "tpch.duckdb_extension"


def test_tables_and_queries_are_made_without_a_network(duckdb_tpch: None) -> None:
    # A fresh network namespace has only a downed loopback: a download would fail.
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a process without a network")
    code = (
        "from bench import _tpch; from pathlib import Path; import tempfile\n"
        "con = _tpch.connect(); _tpch.generate(con, 0.001, Path(tempfile.mkdtemp()))\n"
        "print(len(_tpch.query_texts(con)), con.sql('select count(*) from nation').fetchone()[0])"
    )
    proc = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", code],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["22", "25"]


def test_every_query_is_one_spark_statement(texts: dict[int, str]) -> None:
    adapted = {n: _tpch.spark_query(q) for n, q in texts.items()}
    for n, text in adapted.items():
        assert not text.rstrip().endswith(";"), n
        assert ";" not in text, n
        assert text.lstrip().upper().startswith(("SELECT", "WITH")), n
    # Only the listed rewrites: the rest of duckdb's text reaches Spark unchanged.
    assert adapted[1] == texts[1].strip()[:-1]
    assert "substring(c_phone FROM 1 FOR 2)" in adapted[22]


def test_small_tables_and_duckdb_answers(duckdb_tpch: None, tmp_path: Path) -> None:
    con = _tpch.connect()
    try:
        files = _tpch.generate(con, 0.001, tmp_path)
        answers = _tpch.reference_answers(con, (1, 6))
    finally:
        con.close()
    assert set(files) == set(_tpch.TABLES)
    assert all(path.stat().st_size > 0 for path in files.values())
    assert len(answers[1]) == 4  # returnflag x linestatus groups of Q1
    assert isinstance(answers[6][0][0], float)


def test_normalised_cells_are_json_values() -> None:
    row = _tpch.normalize_row([Decimal("1.25"), dt.date(1995, 3, 15), "x", 3, None])
    assert row == [1.25, "1995-03-15", "x", 3, None]


def test_compare_ignores_order_and_float_noise_but_not_values() -> None:
    left = [["A", 1.0, 2], ["B", 0.0500813, 3]]
    right = [["B", 0.050081, 3], ["A", 1.0, 2]]
    assert _tpch.compare(left, right) is None
    assert _tpch.compare(left, right[:1]) == "2 rows vs 1"
    changed = [["B", 0.0500813, 4], ["A", 1.0, 2]]
    assert _tpch.compare(left, changed) == "sorted row 1, column 3: 3 vs 4"
    assert _tpch.compare([["A", None]], [["A", 0.0]]) is not None


def test_query_lists() -> None:
    assert _tpch.parse_queries("1,3,5-7,3") == (1, 3, 5, 6, 7)
    for bad in ("0", "23", "x", "", "7-5"):
        with pytest.raises(ValueError, match=r"TPC-H has queries 1 to 22|expected query numbers"):
            _tpch.parse_queries(bad)


def test_summary_ratios_medians_and_checks() -> None:
    timings = [
        cluster.Timing(1, "secure", 1, 12.0),
        cluster.Timing(1, "plain", 1, 10.0),
        cluster.Timing(1, "secure", 2, 14.0),
        cluster.Timing(1, "plain", 2, 10.0),
        cluster.Timing(6, "plain", 1, 4.0),
        cluster.Timing(6, "secure", 1, 4.0),
    ]
    answers = {
        "secure": {1: [["A", 1.0]], 6: [[2.0]]},
        "plain": {1: [["A", 1.0]], 6: [[2.5]]},
    }
    rows = cluster.summarise(timings, answers, {1: [["A", 1.0]], 6: [[2.0]]})
    assert [r["ratio"] for r in rows] == [pytest.approx(1.3), 1.0]
    assert rows[0]["secure_vs_plain"] is None
    assert rows[1]["secure_vs_plain"] == "sorted row 0, column 1: 2.0 vs 2.5"
    assert rows[1]["plain_vs_duckdb"] == "sorted row 0, column 1: 2.5 vs 2.0"
    assert _tpch.geometric_mean(r["ratio"] for r in rows) == pytest.approx(1.3**0.5)
