"""The benchmarks' synthetic flights table: seeded, the source file's schema and shape."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bench import flights


def test_same_seed_same_table_other_seed_other_table() -> None:
    table = flights.flights_table(20_000)
    assert table.equals(flights.flights_table(20_000))
    assert not table.equals(flights.flights_table(20_000, seed=flights.SEED + 1))


def test_schema_and_value_ranges() -> None:
    table = flights.flights_table(50_000)
    assert table.num_rows == 50_000
    assert tuple(table.column_names) == flights.COLUMNS
    assert table.schema == flights.SCHEMA
    dates = pc.min_max(table["date"]).as_py()
    assert str(dates["min"]) >= "2001-01-01 00:01:00"
    assert str(dates["max"]) <= "2001-07-01 00:00:00"
    assert pc.all(pc.greater_equal(table["date"][1:], table["date"][:-1])).as_py()
    assert pc.min(table["distance"]).as_py() >= 21
    assert pc.count_distinct(table["origin"]).as_py() == flights.AIRPORTS
    assert not pc.any(pc.equal(table["origin"], table["destination"])).as_py()
    # Mostly on time, with a late tail: the shuffle job's sums see both signs.
    delays = table["delay"]
    assert pc.min(delays).as_py() < 0 < pc.max(delays).as_py()
    assert 0 < pc.mean(delays).as_py() < 30


def test_one_distance_per_route() -> None:
    routes = flights.flights_table(30_000).group_by(["origin", "destination"])
    counts = routes.aggregate([("distance", "count_distinct")])
    assert set(counts["distance_count_distinct"].to_pylist()) == {1}


def test_written_file_reads_back(tmp_path: Path) -> None:
    path = flights.write_flights(tmp_path / "f.parquet", 10_000)
    assert pq.read_table(path).equals(flights.flights_table(10_000))


def test_rows_must_be_positive() -> None:
    with pytest.raises(ValueError, match="expected a positive count, got 0"):
        flights.flights_table(0)
