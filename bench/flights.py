"""A seeded synthetic flights table, the Spark benchmarks' default input.

Same columns and types as the flights-3m.parquet these benchmarks were first run on
(date, delay, distance, origin, destination; 3,000,000 rows, January to June 2001), so
a fresh clone benchmarks with nothing downloaded. ``--data FILE`` takes a real one.

Every value comes from PCG64's raw 64-bit stream, whose output numpy keeps stable
across releases (its distribution methods may change), so a seed gives the same table
on any install.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 3_000_000
SEED = 2001
AIRPORTS = 229
COLUMNS = ("date", "delay", "distance", "origin", "destination")
SCHEMA = pa.schema(
    [
        ("date", pa.timestamp("us")),
        ("delay", pa.int64()),
        ("distance", pa.int64()),
        ("origin", pa.string()),
        ("destination", pa.string()),
    ]
)
# 2001-01-01 00:01 to 2001-07-01 00:00, one departure time per minute at most.
START = np.datetime64("2001-01-01T00:01", "us")
MINUTES = 181 * 24 * 60
ROW_GROUP = 1 << 18  # about the source file's 11 row groups for 3M rows


def _uniform(bits: np.random.PCG64, n: int) -> np.ndarray:
    """``n`` floats in [0, 1) from the top 53 bits of the raw stream."""
    raw = bits.random_raw(n)
    return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _codes(count: int) -> np.ndarray:
    # i -> i * 7919 mod 26**3 is a bijection (7919 is coprime to 26**3): distinct codes.
    values = (np.arange(count) * 7919 + 1234) % (26**3)
    letters = [chr(65 + (v // 676)) + chr(65 + (v // 26) % 26) + chr(65 + v % 26) for v in values]
    return np.array(letters, dtype=object)


def flights_table(rows: int = ROWS, seed: int = SEED) -> pa.Table:
    """A flights table of ``rows`` rows: sorted departure minutes, skewed airport
    popularity (a few hubs, a long tail), one fixed distance per route, and delays that
    are mostly small with a long late tail, as real ones are."""
    if rows < 1:
        raise ValueError(f"rows: expected a positive count, got {rows}")
    bits = np.random.PCG64(seed)
    codes = _codes(AIRPORTS)
    # Airports on a 4,000 x 1,500 mile plane; a route's distance is the straight line.
    x = _uniform(bits, AIRPORTS) * 4000.0
    y = _uniform(bits, AIRPORTS) * 1500.0
    weights = 1.0 / np.arange(1, AIRPORTS + 1) ** 1.1
    cumulative = np.cumsum(weights) / weights.sum()

    def airport(u: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(cumulative, u, side="right"), AIRPORTS - 1)

    minutes = np.sort((_uniform(bits, rows) * MINUTES).astype(np.int64))
    origin = airport(_uniform(bits, rows))
    destination = airport(_uniform(bits, rows))
    same = destination == origin
    destination[same] = (destination[same] + 1) % AIRPORTS
    distance = np.maximum(
        21, np.rint(np.hypot(x[origin] - x[destination], y[origin] - y[destination]))
    ).astype(np.int64)
    # Box-Muller for the on-time bulk, an exponential tail for the late fifth.
    u1, u2, u3, u4 = (_uniform(bits, rows) for _ in range(4))
    normal = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
    late = -np.log1p(-u3) * 45.0
    delay = np.where(u4 < 0.2, 5.0 + late, normal * 9.0 - 2.0)
    delay = np.clip(np.rint(delay), -1116, 1688).astype(np.int64)
    return pa.table(
        [
            pa.array(START + minutes.astype("timedelta64[m]"), type=pa.timestamp("us")),
            pa.array(delay),
            pa.array(distance),
            pa.array(codes[origin], type=pa.string()),
            pa.array(codes[destination], type=pa.string()),
        ],
        schema=SCHEMA,
    )


def write_flights(path: Path, rows: int = ROWS, seed: int = SEED) -> Path:
    """Write :func:`flights_table` to ``path`` as Parquet; returns ``path``."""
    pq.write_table(flights_table(rows, seed), path, row_group_size=ROW_GROUP)
    return path


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """``--data`` (a real table) and ``--rows`` (the synthetic one's size), as the Spark
    benchmarks take them."""
    from bench._report import positive_int

    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="Parquet with columns date, delay, distance, origin, destination"
        " (default: the synthetic table of bench/flights.py)",
    )
    parser.add_argument(
        "--rows",
        type=positive_int,
        default=ROWS,
        help="rows of the synthetic table, without --data (default: %(default)s)",
    )
