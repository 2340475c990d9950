"""The benchmark harness itself (the benchmarks run with `python -m bench`, not here)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from bench.spark_overhead import BenchError, Run

from bench import spark_overhead
from tests.conftest import ROOT


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip


def test_lists_benchmarks() -> None:
    result = _bench()
    assert result.returncode == 0
    assert "spark_overhead" in result.stdout


def test_unknown_benchmark_is_a_usage_error() -> None:
    result = _bench("nope")
    assert result.returncode == 2
    assert "unknown benchmark 'nope'" in result.stderr


def test_job_output_parsing() -> None:
    values = spark_overhead._bench_values("noise\nBENCH_SECONDS=1.5\nBENCH_CHECK=3:4\n")
    assert values == {"BENCH_SECONDS": "1.5", "BENCH_CHECK": "3:4"}
    with pytest.raises(BenchError, match="expected one BENCH_CHECK= line from the job, got 0"):
        spark_overhead._bench_values("BENCH_SECONDS=1.5\n")


def test_medians_and_ratios() -> None:
    runs = [
        Run(1, "secure", 11.0, 20.0, "c"),
        Run(1, "plain", 10.0, 20.0, "c"),
        Run(2, "plain", 12.0, 16.0, "c"),
        Run(2, "secure", 13.0, 18.0, "c"),
    ]
    medians, ratios = spark_overhead._summarise(runs)
    assert medians["plain"]["job_seconds"] == 11.0
    assert ratios["job"] == pytest.approx(12.0 / 11.0)
    assert ratios["wall"] == pytest.approx(19.0 / 18.0)


def test_attestation_benchmark_reports_each_verdict() -> None:
    result = _bench("attestation", "--rounds", "2")
    assert result.returncode == 0, result.stderr
    for verdict in ("ConfigurationAndSWHardeningNeeded", "UpToDate", "TcbLevelNotFoundError"):
        assert verdict in result.stdout
