"""encrypted_io part 2: Spark over encrypted vs plaintext files, in one session.

Three cases (a groupBy over the flights as CSV and as Parquet, and a filtered query
reading two of the wide table's 25 Parquet columns), each read three ways: ``plain``
(Spark's own reader over the plaintext file), ``jvm`` (``read_encrypted(...,
engine="jvm")``: the tml file system under Spark's own reader) and ``python``
(``engine="python"``: the Python data source, the path before the JVM one, kept as a
reference). Every answer is checked against the plain one."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

from bench import _wide
from bench._file_io import BenchError, log, met, yes_no
from bench._report import print_table
from trustedml import KeyRing, encrypt_file
from trustedml.spark import read_encrypted

VARIANTS = ("plain", "jvm", "python")
GOAL = 1.15  # jvm over plain seconds (load + action): at most this
MOONSHOT = 1.05
CSV_SCHEMA = StructType(
    [
        StructField("date", TimestampType()),
        StructField("delay", LongType()),
        StructField("distance", LongType()),
        StructField("origin", StringType()),
        StructField("destination", StringType()),
    ]
)
REL_TOL = 1e-9

Row = tuple[Any, ...]


def _by_origin(df: DataFrame) -> list[Row]:
    rows = (
        df.groupBy("origin")
        .agg(
            F.count("*").alias("flights"),
            F.sum("delay").alias("delay"),
            F.avg("distance").alias("avg_distance"),
        )
        .collect()
    )
    return sorted((tuple(r) for r in rows), key=lambda r: (r[0] is not None, r[0] or ""))


def _late_month(df: DataFrame) -> list[Row]:
    rows = (
        df.where(F.col("date") >= F.lit(_wide.SINCE))
        .groupBy("origin")
        .agg(F.count("*").alias("flights"), F.sum("distance").alias("distance"))
        .collect()
    )
    return sorted((tuple(r) for r in rows), key=lambda r: (r[0] is not None, r[0] or ""))


@dataclass(frozen=True)
class Case:
    name: str
    file: str  # the plaintext file's name; the encrypted one adds .tml
    fmt: str
    about: str
    query: Callable[[DataFrame], list[Row]]
    options: dict[str, Any] = field(default_factory=dict)


CASES = (
    Case(
        "csv",
        "flights.csv",
        "csv",
        "groupBy(origin): count, sum(delay), avg(distance)",
        _by_origin,
        {"header": True, "schema": CSV_SCHEMA},
    ),
    Case(
        "parquet",
        "flights.parquet",
        "parquet",
        "groupBy(origin): count, sum(delay), avg(distance)",
        _by_origin,
    ),
    Case(
        "parquet_query",
        "wide.parquet",
        "parquet",
        f"25 columns: where date >= {_wide.SINCE:%Y-%m-%d}, groupBy(origin): count, sum(distance)",
        _late_month,
    ),
)


@dataclass(frozen=True)
class SparkRun:
    round: int  # 0: the untimed warm-up (recorded, left out of the medians)
    case: str
    variant: str
    load_seconds: float  # building the DataFrame
    action_seconds: float  # the query + collect


@dataclass
class SparkOutcome:
    runs: list[SparkRun] = field(default_factory=list)
    expected: dict[str, list[Row]] = field(default_factory=dict)
    # "case" (plain failed: the case is dropped) or "case/variant" -> why
    failures: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Inputs:
    rows: int
    wide_columns: int
    paths: dict[str, dict[str, Path]]  # case -> plain file | encrypted directory
    bytes: dict[str, dict[str, int]]


def prepare_inputs(table: pa.Table, root: Path, ring: KeyRing, key_id: str) -> Inputs:
    """Plaintext CSV and Parquet of the flights ``table``, its wide Parquet, and an
    encrypted copy of each (``encrypt_file``), named as the plain file plus ``.tml``
    and alone in a directory: the encrypted input is that directory, as a dataset
    Spark wrote would be."""
    table = table.select([f.name for f in CSV_SCHEMA.fields])
    log(f"writing plaintext CSV, Parquet and wide Parquet ({table.num_rows} rows)")
    pa_csv.write_csv(table, root / "flights.csv")
    pq.write_table(table, root / "flights.parquet")
    _wide.write_wide(table, root / "wide.parquet")
    paths: dict[str, dict[str, Path]] = {}
    for case in CASES:
        plain = root / case.file
        enc = root / "encrypted" / case.file / f"{case.file}.tml"
        if not enc.exists():
            log(f"encrypting {plain.name}")
            enc.parent.mkdir(parents=True)
            encrypt_file(plain, enc, key_id=key_id, keystore=ring)
        paths[case.name] = {"plain": plain, "encrypted": enc.parent}
    sizes = {
        name: {"plain": by["plain"].stat().st_size, "encrypted": _size(by["encrypted"])}
        for name, by in paths.items()
    }
    width = len(CSV_SCHEMA.fields) + len(_wide.EXTRA)
    return Inputs(table.num_rows, width, paths, sizes)


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


def _load(
    spark: SparkSession, ring: KeyRing, case: Case, variant: str, inputs: Inputs
) -> DataFrame:
    options = dict(case.options)
    if variant == "plain":
        reader = spark.read
        schema = options.pop("schema", None)
        if schema is not None:
            reader = reader.schema(schema)
        plain = inputs.paths[case.name]["plain"]
        return reader.options(**options).format(case.fmt).load(str(plain))
    path = inputs.paths[case.name]["encrypted"]
    return read_encrypted(spark, path, case.fmt, keystore=ring, engine=variant, **options)


def differences(expected: Sequence[Row], got: Sequence[Row], limit: int = 5) -> list[str]:
    """Where two answers disagree (floats compared with a relative tolerance)."""
    if len(expected) != len(got):
        return [f"{len(expected)} rows vs {len(got)} rows"]

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, float) and isinstance(b, float):
            return math.isclose(a, b, rel_tol=REL_TOL)
        return bool(a == b)

    diffs = [
        f"expected {want}, got {have}"
        for want, have in zip(expected, got, strict=True)
        if len(want) != len(have) or not all(map(same, want, have))
    ]
    return diffs[:limit]


def _order(round_index: int) -> tuple[str, ...]:
    # Each variant goes first, second and third in turn: cache and JIT warm-up favour
    # none of them.
    shift = round_index % len(VARIANTS)
    return VARIANTS[shift:] + VARIANTS[:shift]


def _timed(
    spark: SparkSession, ring: KeyRing, case: Case, variant: str, inputs: Inputs, number: int
) -> tuple[SparkRun, list[Row]]:
    try:
        start = time.perf_counter()
        df = _load(spark, ring, case, variant, inputs)
        loaded = time.perf_counter()
        result = case.query(df)
        done = time.perf_counter()
    except PySparkException as exc:
        # The message carries the Python worker's traceback when a worker failed.
        raise BenchError(f"{case.name} {variant} (round {number}) failed in Spark: {exc}") from exc
    return SparkRun(number, case.name, variant, loaded - start, done - loaded), result


def _check(outcome: SparkOutcome, case: Case, variant: str, result: list[Row], rows: int) -> None:
    if variant == "plain" and case.name not in outcome.expected:
        if not result:
            raise BenchError(f"{case.name} plain: no rows")
        if case.query is _by_origin and sum(r[1] for r in result) != rows:
            raise BenchError(f"{case.name} plain: counted {sum(r[1] for r in result)} of {rows}")
        outcome.expected[case.name] = result
    diffs = differences(outcome.expected[case.name], result)
    if diffs:
        raise BenchError(
            f"{case.name} {variant} disagrees with {case.name} plain:\n  " + "\n  ".join(diffs)
        )


def spark_benchmark(
    spark: SparkSession,
    inputs: Inputs,
    ring: KeyRing,
    rounds: int,
    variants: Sequence[str] = VARIANTS,
) -> SparkOutcome:
    """A warm-up (round 0, plain first so every case has its reference) and ``rounds``
    timed rounds of every case and variant, each answer checked against plain. A
    variant that fails is dropped from the remaining rounds; if plain fails, the case."""
    outcome = SparkOutcome()
    schedule = [(0, VARIANTS)] + [(i + 1, _order(i)) for i in range(rounds)]
    for number, order in schedule:
        label = "warm-up" if number == 0 else f"round {number}/{rounds}"
        for case in CASES:
            for variant in (v for v in order if v in variants):
                if case.name in outcome.failures or f"{case.name}/{variant}" in outcome.failures:
                    continue
                try:
                    run, result = _timed(spark, ring, case, variant, inputs, number)
                    outcome.runs.append(run)
                    log(
                        f"{label:<11} {case.name:<13} {variant:<6} load {run.load_seconds:6.2f} s"
                        f"  action {run.action_seconds:6.2f} s"
                    )
                    _check(outcome, case, variant, result, inputs.rows)
                except BenchError as exc:
                    key = case.name if variant == "plain" else f"{case.name}/{variant}"
                    outcome.failures[key] = str(exc)
                    log(f"{label:<11} {key} FAILED, dropped from the remaining rounds")
    return outcome


def failed(outcome: SparkOutcome, run: SparkRun) -> bool:
    """Whether ``run``'s case or variant was dropped after a failure."""
    return run.case in outcome.failures or f"{run.case}/{run.variant}" in outcome.failures


def medians(outcome: SparkOutcome) -> dict[str, dict[str, dict[str, float]]]:
    """case -> variant -> load/action/total seconds, medians of the timed rounds."""
    result: dict[str, dict[str, dict[str, float]]] = {}
    for case in CASES:
        for variant in VARIANTS:
            runs = [
                r
                for r in outcome.runs
                if r.round > 0 and (r.case, r.variant) == (case.name, variant)
            ]
            if not runs:
                continue
            result.setdefault(case.name, {})[variant] = {
                "load_seconds": statistics.median(r.load_seconds for r in runs),
                "action_seconds": statistics.median(r.action_seconds for r in runs),
                "total_seconds": statistics.median(r.load_seconds + r.action_seconds for r in runs),
                # The least disturbed run of each: on a busy machine a steadier ratio.
                "best_total_seconds": min(r.load_seconds + r.action_seconds for r in runs),
            }
    return result


def spark_summary(outcome: SparkOutcome) -> list[dict[str, Any]]:
    """One row per case: the medians of each variant, ratios over plain (total and
    action alone) and whether jvm/plain (total) meets the goal."""
    timed = medians(outcome)
    rows: list[dict[str, Any]] = []
    for case in CASES:
        row: dict[str, Any] = {"part": "spark", "case": case.name, "query": case.about}
        by_variant = timed.get(case.name, {})
        plain = by_variant.get("plain")
        for variant in VARIANTS:
            failed = outcome.failures.get(f"{case.name}/{variant}", outcome.failures.get(case.name))
            if failed is not None:
                row[f"{variant}_failed"] = failed
            seconds = by_variant.get(variant)
            if seconds is None:
                continue
            row[variant] = seconds
            if plain is not None and variant != "plain":
                kinds = (
                    ("", "total_seconds"),
                    ("action_", "action_seconds"),
                    ("best_", "best_total_seconds"),
                )
                for kind, key in kinds:
                    row[f"{kind}ratio_{variant}_over_plain"] = seconds[key] / plain[key]
        ratio = row.get("ratio_jvm_over_plain")
        row["goal"] = {"ratio_jvm_over_plain_at_most": GOAL, "moonshot": MOONSHOT}
        row["goal_met"] = None if ratio is None else met(ratio, GOAL, at_least=False)
        row["moonshot_met"] = None if ratio is None else met(ratio, MOONSHOT, at_least=False)
        rows.append(row)
    return rows


COLUMNS = (
    "input / read",
    "load",
    "action",
    "total",
    "/ plain",
    "action / plain",
    "best / plain",
    "goal",
    "met",
)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_spark_table(rows: Sequence[dict[str, Any]], title: str) -> None:
    table: list[tuple[str, ...]] = []
    for row in rows:
        for variant in VARIANTS:
            seconds = row.get(variant)
            if seconds is None:
                why = "FAILED" if f"{variant}_failed" in row else "not run"
                table.append((f"{row['case']} {variant}", *["-"] * 6, "", why))
                continue
            ratios = tuple(
                _ratio(1.0 if variant == "plain" else row.get(f"{kind}ratio_{variant}_over_plain"))
                for kind in ("", "action_", "best_")
            )
            jvm = variant == "jvm"
            table.append(
                (
                    f"{row['case']} {variant}",
                    f"{seconds['load_seconds']:.2f}",
                    f"{seconds['action_seconds']:.2f}",
                    f"{seconds['total_seconds']:.2f}",
                    *ratios,
                    f"<= {GOAL:.2f}" if jvm else "",
                    yes_no(row["goal_met"]) if jvm else "",
                )
            )
    print_table(title, COLUMNS, table)
    for row in rows:
        print(f"{row['case']}: {row['query']}")
