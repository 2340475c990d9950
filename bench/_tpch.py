"""TPC-H for the Spark benchmarks: tables and the 22 query texts made offline by duckdb's
tpch extension (the `duckdb-extension-tpch` package), the queries adapted to Spark SQL,
and the comparison of answers (row by row after sorting, numbers within a tolerance).

Nothing is downloaded: the extension is loaded from the installed package's file, with
duckdb's automatic extension install and load turned off.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import re
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench._report import positive_int, print_table

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


@dataclass(frozen=True)
class Prepared:
    """What a TPC-H benchmark run needs, made by :func:`prepare`."""

    files: dict[str, Path]  # table -> Parquet file
    queries: dict[int, str]  # number -> Spark SQL text
    reference: dict[int, list[list[Any]]]  # number -> duckdb's normalised answer
    seconds: float


def prepare(scale: float, directory: Path, numbers: Iterable[int]) -> Prepared:
    """The tables at ``scale`` as Parquet in ``directory``, the queries ``numbers``
    adapted to Spark SQL, and duckdb's answers to them."""
    start = time.perf_counter()
    numbers = tuple(numbers)
    con = connect()
    try:
        files = generate(con, scale, directory)
        texts = query_texts(con)
        reference = reference_answers(con, numbers)
    finally:
        con.close()
    queries = {n: spark_query(texts[n]) for n in numbers}
    return Prepared(files, queries, reference, time.perf_counter() - start)


def tables_of(queries: Iterable[str]) -> tuple[str, ...]:
    """The TPC-H tables the query texts name (a column prefix such as ``p_`` or a word
    such as ``supp_nation`` does not count)."""
    texts = list(queries)
    return tuple(t for t in TABLES if any(re.search(rf"\b{t}\b", q) for q in texts))


def scale_factor(text: str) -> float:
    """argparse type for ``--sf``/``--scale``: a TPC-H scale factor in (0, 100]."""
    value = float(text)
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"expected a scale factor in (0, 100], got {text}")
    return value


def run_parser(
    name: str, about: str | None, scale_flag: str, rounds: int
) -> argparse.ArgumentParser:
    """A parser with the options every TPC-H benchmark takes: scale factor, queries,
    rounds and --out."""
    parser = argparse.ArgumentParser(
        prog=f"python -m bench {name}",
        description=about,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        scale_flag, type=scale_factor, default=1.0, help="scale factor (default: 1)"
    )
    parser.add_argument(
        "--queries", default="1-22", help="query numbers, e.g. 1,3,5-7 (default: all 22)"
    )
    parser.add_argument("--rounds", type=positive_int, default=rounds, help="default: %(default)s")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"directory for {name}.json (default: bench/results)"
    )
    return parser


def summarise(
    timed: Iterable[tuple[int, str, float]],
    answers: dict[str, dict[int, list[list[Any]]]],
    reference: dict[int, list[list[Any]]],
    test: str,
    base: str,
) -> list[dict[str, Any]]:
    """One row per query from the ``(query, side, seconds)`` of the timed runs: the
    median seconds of ``test`` and ``base``, their ratio, and the answer checks
    (``test`` vs ``base``, ``base`` vs duckdb's ``reference``)."""
    seconds: dict[int, dict[str, list[float]]] = {}
    for number, side, value in timed:
        seconds.setdefault(number, {}).setdefault(side, []).append(value)
    rows = []
    for number in sorted(seconds):
        median = {side: statistics.median(seconds[number][side]) for side in (test, base)}
        mine, theirs = answers[test][number], answers[base][number]
        rows.append(
            {
                "query": number,
                f"{base}_seconds": median[base],
                f"{test}_seconds": median[test],
                "ratio": median[test] / median[base],
                "rows": len(mine),
                f"{test}_vs_{base}": compare(mine, theirs),
                f"{base}_vs_duckdb": compare(theirs, reference[number]),
            }
        )
    return rows


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


def print_queries(
    title: str, rows: Sequence[dict[str, Any]], variant: str, geomean: float, goal: float
) -> None:
    """The per-query table (plain vs ``variant`` seconds, ratio, answers compared) and the
    geometric mean of the ratios against ``goal``."""
    print_table(
        title,
        ("query", "plain s", f"{variant} s", f"{variant}/plain", "rows", "same answers"),
        [
            (
                f"Q{r['query']}",
                f"{r['plain_seconds']:.2f}",
                f"{r[f'{variant}_seconds']:.2f}",
                f"{r['ratio']:.3f}",
                r["rows"],
                "yes" if r[f"{variant}_vs_plain"] is None else f"NO: {r[f'{variant}_vs_plain']}",
            )
            for r in rows
        ],
    )
    verdict = "meets" if geomean <= goal else "misses"
    print(f"geometric mean {variant}/plain: {geomean:.3f} ({verdict} the goal <= {goal})")


def print_duckdb_differences(rows: Sequence[dict[str, Any]]) -> None:
    for r in rows:
        if r["plain_vs_duckdb"] is not None:
            print(f"Q{r['query']}: Spark's answer differs from duckdb's: {r['plain_vs_duckdb']}")


def work_root(stack: contextlib.ExitStack, work: Path | None) -> Path:
    """``work`` (made if missing), or a temporary directory removed when ``stack`` closes."""
    if work is None:
        return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="trustedml-tpch-")))
    root = work.resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root
