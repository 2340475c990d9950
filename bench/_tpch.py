"""TPC-H for the Spark benchmarks: tables and the 22 query texts made offline by duckdb's
tpch extension (the `duckdb-extension-tpch` package), the queries adapted to Spark SQL,
and the comparison of answers (row by row after sorting, numbers within a tolerance).

Nothing is downloaded: the extension is loaded from the installed package's file, with
duckdb's automatic extension install and load turned off.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

TABLES = ("customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier")
QUERIES = tuple(range(1, 23))
# Spark computes avg() of a DECIMAL(15,2) as a decimal rounded to 6 places, duckdb as a
# double: their answers differ by up to 5e-7. Two Spark runs agree exactly on decimals.
REL_TOL = 1e-6
ABS_TOL = 1e-6


@dataclass(frozen=True)
class Rewrite:
    """One mechanical change from duckdb's query text to Spark SQL, and why."""

    name: str
    pattern: str
    replacement: str
    why: str

    def apply(self, text: str) -> str:
        return re.sub(self.pattern, self.replacement, text, flags=re.DOTALL)


# Everything else in duckdb's texts (CAST('...' AS date), date '...', extract(year FROM
# x), substring(x FROM 1 FOR 2), `AS t (a, b)` column aliases, correlated EXISTS and
# scalar subqueries, WITH) is valid Spark SQL with the same meaning: each adapted query
# gives duckdb's answer on SF 0.01 (tests/bench/test_cluster_bench.py checks the texts,
# `python -m bench cluster` the answers at the chosen scale).
REWRITES = (
    Rewrite(
        "trailing-semicolon",
        r";\s*\Z",
        "",
        "SparkSession.sql takes one statement without the terminating ';'",
    ),
)


class TpchError(Exception):
    """The TPC-H tables or queries cannot be made."""


def spark_query(text: str) -> str:
    """duckdb's query text adapted to Spark SQL (every rule of REWRITES, in order)."""
    text = text.strip()
    for rewrite in REWRITES:
        text = rewrite.apply(text)
    return text


def extension_path() -> Path:
    """The tpch extension shipped by `duckdb-extension-tpch` for the installed duckdb."""
    try:
        import duckdb
        import duckdb_extension_tpch
    except ImportError as exc:
        raise TpchError(f"{exc.name} is not installed: pip install -e '.[bench]'") from exc
    root = Path(duckdb_extension_tpch.__file__).parent / "extensions"
    path = root / f"v{duckdb.__version__}" / "tpch.duckdb_extension"
    if not path.is_file():
        found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        raise TpchError(
            f"duckdb {duckdb.__version__} needs the tpch extension built for it; "
            f"duckdb-extension-tpch has {found or 'none'}: pip install -e '.[bench]'"
        )
    return path


def connect() -> Any:
    """An in-memory duckdb connection with the tpch extension loaded from the package."""
    import duckdb

    # No download behind our back: only the packaged file may be loaded.
    con = duckdb.connect(
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    path = str(extension_path()).replace("'", "''")
    con.execute(f"LOAD '{path}'")
    return con


def query_texts(con: Any) -> dict[int, str]:
    """duckdb's 22 TPC-H query texts, by number, as duckdb runs them."""
    rows = con.sql("SELECT query_nr, query FROM tpch_queries() ORDER BY query_nr").fetchall()
    return {int(n): str(text) for n, text in rows}


def generate(con: Any, scale: float, directory: Path) -> dict[str, Path]:
    """Make the tables at scale factor ``scale`` in ``con`` and write one Parquet file
    per table into ``directory``; returns table -> file."""
    con.execute(f"CALL dbgen(sf={float(scale)!r})")
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for table in TABLES:
        path = directory / f"{table}.parquet"
        target = str(path).replace("'", "''")
        con.execute(f"COPY {table} TO '{target}' (FORMAT PARQUET)")
        files[table] = path
    return files


def reference_answers(con: Any, numbers: Iterable[int]) -> dict[int, list[list[Any]]]:
    """duckdb's answers to the queries (normalised rows), on the tables in ``con``."""
    texts = query_texts(con)
    return {n: [normalize_row(row) for row in con.sql(texts[n]).fetchall()] for n in numbers}


def normalize_value(value: Any) -> Any:
    """A JSON value for one cell: decimals as floats, dates as ISO text."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


def normalize_row(row: Iterable[Any]) -> list[Any]:
    return [normalize_value(v) for v in row]


def _sort_key(row: Sequence[Any]) -> tuple[tuple[int, Any], ...]:
    # Numbers rounded so that tolerance-level differences do not reorder rows; None first.
    def cell(v: Any) -> tuple[int, Any]:
        if v is None:
            return (0, 0)
        if isinstance(v, int | float):
            return (1, round(float(v), 4))
        return (2, str(v))

    return tuple(cell(v) for v in row)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return bool(a == b)


def compare(left: Sequence[Sequence[Any]], right: Sequence[Sequence[Any]]) -> str | None:
    """None when the two answers hold the same rows (in any order; numbers within
    REL_TOL/ABS_TOL), else what differs first."""
    if len(left) != len(right):
        return f"{len(left)} rows vs {len(right)}"
    pairs = zip(sorted(left, key=_sort_key), sorted(right, key=_sort_key), strict=True)
    for i, (a, b) in enumerate(pairs):
        if len(a) != len(b):
            return f"sorted row {i}: {len(a)} columns vs {len(b)}"
        for j, (x, y) in enumerate(zip(a, b, strict=True)):
            if not _same(x, y):
                return f"sorted row {i}, column {j + 1}: {x!r} vs {y!r}"
    return None


def geometric_mean(values: Iterable[float]) -> float:
    logs = [math.log(v) for v in values]
    if not logs:
        raise ValueError("geometric mean of nothing")
    return math.exp(sum(logs) / len(logs))


def parse_queries(text: str) -> tuple[int, ...]:
    """``1,3,5-7`` -> (1, 3, 5, 6, 7); each number in 1..22."""
    numbers: list[int] = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            span = range(int(first), int(last if sep else first) + 1)
        except ValueError:
            raise ValueError(f"expected query numbers like 1,3,5-7, got {text!r}") from None
        for n in span:
            if n not in QUERIES:
                raise ValueError(f"TPC-H has queries 1 to 22, got {n}")
            if n not in numbers:
                numbers.append(n)
    if not numbers:
        raise ValueError(f"expected query numbers like 1,3,5-7, got {text!r}")
    return tuple(numbers)
