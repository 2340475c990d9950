"""TPC-H over `.tml`-encrypted Parquet vs plain Parquet, in one local Spark session.

The tables (scale factor ``--scale``, default 1) and the 22 query texts are made offline
by duckdb's tpch extension (bench/_tpch.py, the `bench` extra) as one Parquet file per
table; ``trustedml.data.encrypt_file`` makes an encrypted copy of each, named as the
plain one plus ``.tml``. One secure session (``--master``, default local[2]) reads the
plain tables with ``spark.read.parquet`` and the encrypted ones with
``read_encrypted(..., engine="jvm")`` (the tml file system under Spark's own Parquet
reader; ``--engine python`` times the Python data source instead), and registers each
set as the temporary views the queries name, switching sets query by query (the order
alternates). Reported: per-query seconds (``spark.sql(q).collect()``, median over
``--rounds`` after one untimed warm-up run of each), the ratio encrypted/plain and its
geometric mean (goal <= 1.15). Every answer is compared: encrypted vs plain row by row
after sorting (numbers within 1e-6), and plain vs duckdb's own answer.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession

from bench import _tpch
from bench._report import write_results
from bench._session import secure_session
from trustedml import KeyRing, TrustedMLError, encrypt_file
from trustedml.spark import read_encrypted

NAME = "tpch"
VARIANTS = ("plain", "tml")
KEY_ID = "tpch"
GOAL = 1.15
# A few shuffle partitions per core: Spark's 200 default makes SF1's small stages
# mostly task overhead on two cores (as in bench/cluster.py).
SPARK_EXTRA = {"spark.sql.shuffle.partitions": "8"}


class BenchError(Exception):
    """The benchmark cannot go on (its message says why)."""


@dataclass(frozen=True)
class Timing:
    query: int
    variant: str
    round: int  # 0: the untimed warm-up
    seconds: float


def _parser() -> argparse.ArgumentParser:
    parser = _tpch.run_parser(NAME, __doc__, "--scale", rounds=3)
    parser.add_argument("--master", default="local[2]", help="default: %(default)s")
    parser.add_argument(
        "--engine",
        choices=("jvm", "python"),
        default="jvm",
        help="read_encrypted's engine for the encrypted tables (default: %(default)s)",
    )
    parser.add_argument(
        "--log2-chunk",
        type=int,
        default=None,
        help="chunk size of the encrypted copies, log2 bytes (default: encrypt_file's, 20)",
    )
    parser.add_argument(
        "--driver-memory", default="4g", help="spark.driver.memory (default: %(default)s)"
    )
    parser.add_argument("--work", type=Path, default=None, help="keep tables and keys here")
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def encrypt_tables(
    files: dict[str, Path], directory: Path, ring: KeyRing, log2_chunk: int | None = None
) -> dict[str, Path]:
    """An encrypted copy of each table's file, named as it plus ``.tml``, alone in
    ``directory/<table>``; table -> that directory (a dataset, as Spark writes them)."""
    copies = {}
    for table, path in files.items():
        copies[table] = directory / table
        copies[table].mkdir(parents=True, exist_ok=True)
        target = copies[table] / f"{path.name}.tml"
        chunk = {} if log2_chunk is None else {"log2_chunk": log2_chunk}
        encrypt_file(path, target, key_id=KEY_ID, keystore=ring, **chunk)
    return copies


def load_tables(
    spark: SparkSession,
    paths: dict[str, dict[str, Path]],
    tables: Sequence[str],
    ring: KeyRing,
    engine: str,
) -> tuple[dict[str, dict[str, DataFrame]], dict[str, float]]:
    """variant -> table -> DataFrame for ``tables`` (``paths``: variant -> table -> the
    plain file or the encrypted directory), and the seconds each variant took: each
    table read and counted once, out of the query timings (file listing, footers, key
    hand-over; the first variant also warms the JVM up)."""
    frames: dict[str, dict[str, DataFrame]] = {variant: {} for variant in VARIANTS}
    seconds: dict[str, float] = {}
    for variant in VARIANTS:
        start = time.perf_counter()
        for table in tables:
            path = paths[variant][table]
            try:
                if variant == "plain":
                    frame = spark.read.parquet(str(path))
                else:
                    frame = read_encrypted(spark, path, "parquet", keystore=ring, engine=engine)
                frame.count()
            except PySparkException as exc:
                raise BenchError(f"{variant} {table}: {exc}") from exc
            frames[variant][table] = frame
        seconds[variant] = time.perf_counter() - start
        _log(f"{variant:<5} tables loaded and counted in {seconds[variant]:.2f} s")
    return frames, seconds


def _use(frames: dict[str, DataFrame]) -> None:
    for table, frame in frames.items():
        frame.createOrReplaceTempView(table)


def run_queries(
    spark: SparkSession,
    frames: dict[str, dict[str, DataFrame]],
    queries: dict[int, str],
    rounds: int,
) -> tuple[list[Timing], dict[str, dict[int, list[list[Any]]]]]:
    """Each query once untimed then ``rounds`` times per variant, taking turns; the
    answer of each variant's first run."""
    timings: list[Timing] = []
    answers: dict[str, dict[int, list[list[Any]]]] = {variant: {} for variant in VARIANTS}
    for i, (number, text) in enumerate(queries.items()):
        for r in range(rounds + 1):
            # Alternating who goes first keeps caches and JIT warm-up from favouring one.
            order = VARIANTS if (i + r) % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                _use(frames[variant])
                try:
                    start = time.perf_counter()
                    rows = spark.sql(text).collect()
                    seconds = time.perf_counter() - start
                except PySparkException as exc:
                    raise BenchError(f"Q{number} {variant}: {exc}") from exc
                timings.append(Timing(number, variant, r, seconds))
                answers[variant].setdefault(number, [_tpch.normalize_row(row) for row in rows])
                label = "warm-up" if r == 0 else f"round {r}"
                _log(f"Q{number:<2} {label:<8} {variant:<5} {seconds:8.2f} s")
    return timings, answers


def _print(args: argparse.Namespace, rows: Sequence[dict[str, Any]], geomean: float) -> None:
    _tpch.print_queries(
        f"{NAME}: TPC-H SF {args.scale:g}, {args.master}, .tml Parquet (engine={args.engine})"
        f" vs plain Parquet, median of {args.rounds} (seconds)",
        rows,
        "tml",
        geomean,
        GOAL,
    )
    _tpch.print_duckdb_differences(rows)


def benchmark(args: argparse.Namespace, numbers: Sequence[int], root: Path) -> dict[str, Any]:
    """Make and encrypt the tables, run the queries; the results payload."""
    prepared = _tpch.prepare(args.scale, root / f"tpch-sf{args.scale:g}", numbers)
    _log(f"TPC-H SF {args.scale:g}: tables and duckdb's answers in {prepared.seconds:.1f} s")
    ring = KeyRing({KEY_ID: os.urandom(32)})
    start = time.perf_counter()
    directory = root / f"tpch-sf{args.scale:g}-tml"
    encrypted = encrypt_tables(prepared.files, directory, ring, args.log2_chunk)
    _log(f"encrypted the {len(encrypted)} tables in {time.perf_counter() - start:.1f} s")
    sizes = {
        table: {
            "plain": prepared.files[table].stat().st_size,
            "tml": sum(p.stat().st_size for p in path.iterdir()),
        }
        for table, path in encrypted.items()
    }
    extra = {**SPARK_EXTRA, "spark.driver.memory": args.driver_memory}
    spark = secure_session(root, args.master, f"bench-{NAME}", extra)
    try:
        paths = {"plain": prepared.files, "tml": encrypted}
        result = measure(spark, prepared, paths, ring, args.engine, args.rounds)
    finally:
        spark.stop()
    return {**result, "bytes": sizes}


def _best_geomean(timings: Sequence[Timing]) -> float:
    """The geometric mean of tml/plain over each query's fastest timed runs: steadier
    than the medians when other work shares the machine."""
    best: dict[tuple[int, str], float] = {}
    for t in timings:
        if t.round > 0:
            key = (t.query, t.variant)
            best[key] = min(best.get(key, t.seconds), t.seconds)
    queries = sorted({query for query, _ in best})
    return _tpch.geometric_mean(best[(q, "tml")] / best[(q, "plain")] for q in queries)


def measure(
    spark: SparkSession,
    prepared: _tpch.Prepared,
    paths: dict[str, dict[str, Path]],
    ring: KeyRing,
    engine: str,
    rounds: int,
) -> dict[str, Any]:
    """Load the tables the queries name, run the queries in ``spark``; the results
    payload (the temporary views are dropped again)."""
    tables = _tpch.tables_of(prepared.queries.values())
    frames, load_seconds = load_tables(spark, paths, tables, ring, engine)
    try:
        timings, answers = run_queries(spark, frames, prepared.queries, rounds)
    finally:
        for table in tables:
            spark.catalog.dropTempView(table)
    timed = ((t.query, t.variant, t.seconds) for t in timings if t.round > 0)
    rows = _tpch.summarise(timed, answers, prepared.reference, "tml", "plain")
    return {
        "rows": rows,
        "geomean_ratio": _tpch.geometric_mean(r["ratio"] for r in rows),
        "total_ratio": sum(r["tml_seconds"] for r in rows) / sum(r["plain_seconds"] for r in rows),
        "best_geomean_ratio": _best_geomean(timings),
        "load_seconds": load_seconds,
        "timings": [asdict(t) for t in timings],
    }


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        numbers = _tpch.parse_queries(args.queries)
    except ValueError as exc:
        parser.error(str(exc))
    load_before = os.getloadavg()
    if load_before[0] >= 1.0:
        _log(f"warning: load average {load_before[0]:.1f} before start: timings will be noisy")
    with contextlib.ExitStack() as stack:
        root = _tpch.work_root(stack, args.work)
        try:
            result = benchmark(args, numbers, root)
        except (_tpch.TpchError, BenchError, TrustedMLError) as exc:
            print(f"{NAME}: {exc}", file=sys.stderr)
            return 1
    rows = result.pop("rows")
    _print(args, rows, result["geomean_ratio"])
    print(
        f"fastest runs: geometric mean {result['best_geomean_ratio']:.3f};"
        f" summed medians: {result['total_ratio']:.3f}"
    )
    settings = {
        "scale_factor": args.scale,
        "queries": list(numbers),
        "rounds": args.rounds,
        "master": args.master,
        "engine": args.engine,
        "driver_memory": args.driver_memory,
        "log2_chunk": args.log2_chunk,
        "spark_extra": SPARK_EXTRA,
        "goal_geomean_ratio": GOAL,
    }
    load = {"before": load_before, "after": os.getloadavg()}
    path = write_results(
        NAME, rows, {"settings": settings, "load_average": load, **result}, directory=args.out
    )
    print(f"wrote {path}")
    wrong = [r["query"] for r in rows if r["tml_vs_plain"] is not None]
    if wrong:
        print(f"{NAME}: encrypted and plain answers differ for Q{wrong}", file=sys.stderr)
        return 1
    return 0
