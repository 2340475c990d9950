"""A wide table for encrypted_io's Parquet query: the flights columns plus twenty more,
so that a query reading two of them and filtering on a third shows column pruning and
row-group skipping (the flights are sorted by date, so a date filter skips row groups)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import flights

SEED = flights.SEED + 1
INTS = tuple(f"i{n:02d}" for n in range(1, 9))
FLOATS = tuple(f"f{n:02d}" for n in range(1, 7))
WORDS = tuple(f"s{n:02d}" for n in range(1, 7))
EXTRA = (*INTS, *FLOATS, *WORDS)
# The query: flights from this date on (the last month of six), grouped by origin.
SINCE = dt.datetime(2001, 6, 1)
VOCABULARY = np.array([f"w{n:03d}" for n in range(100)], dtype=object)


def wide_table(base: pa.Table, seed: int = SEED) -> pa.Table:
    """``base`` (the flights table) with the EXTRA columns appended: integers below
    10,000, quarter-steps up to 500 and words of a 100-word vocabulary, so the file
    stays small (dictionary encoding) while having many columns to skip."""
    bits = np.random.PCG64(seed)
    rows = base.num_rows
    table = base
    for name in INTS:
        values = (bits.random_raw(rows) % np.uint64(10_000)).astype(np.int64)
        table = table.append_column(name, pa.array(values))
    for name in FLOATS:
        quarters = (bits.random_raw(rows) % np.uint64(2_000)).astype(np.float64)
        table = table.append_column(name, pa.array(quarters / 4.0))
    for name in WORDS:
        index = (bits.random_raw(rows) % np.uint64(len(VOCABULARY))).astype(np.int64)
        table = table.append_column(name, pa.array(VOCABULARY[index], type=pa.string()))
    return table


def write_wide(base: pa.Table, path: Path) -> Path:
    """Write :func:`wide_table` of ``base`` as Parquet in the flights' row groups."""
    pq.write_table(wide_table(base), path, row_group_size=flights.ROW_GROUP)
    return path
