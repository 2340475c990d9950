"""What encryption at rest costs: trusted-ml file encryption and decryption against
raw AES-256-GCM, and Spark reading encrypted vs plaintext CSV and Parquet made from a
flights table (by default the seeded synthetic one of bench/flights.py, 3M rows, or
``--data FILE.parquet``): a groupBy over CSV and over Parquet, and a filtered query
reading two of a 25-column Parquet table. Each Spark input is read plain, through the
tml file system (``engine="jvm"``) and through the Python data source
(``engine="python"``, the reference), in one secure session. Sizes and rates are in
MiB (2**20 bytes)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench import _file_io, _spark_io, _wide, flights
from bench._file_io import BenchError, log
from bench._report import positive_int, write_results
from bench._session import secure_session
from trustedml import KeyRing, TrustedMLError

NAME = "encrypted_io"
KEY_ID = "bench"
PARTS = ("file", "spark")


def _variants(text: str) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in chosen if v not in _spark_io.VARIANTS]
    if unknown or "plain" not in chosen:
        raise argparse.ArgumentTypeError(
            f"expected plain and any of jvm, python (comma-separated), got {text!r}"
        )
    return chosen


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m bench {NAME}", description=__doc__)
    parser.add_argument("--rounds", type=positive_int, default=3, help="default: %(default)s")
    parser.add_argument(
        "--size-mb",
        type=positive_int,
        default=256,
        help="MiB of random data for the file part (default: %(default)s)",
    )
    parser.add_argument(
        "--raw-mib",
        type=positive_int,
        default=_file_io.RAW_MIB,
        help="MiB per raw AES-GCM pass (default: %(default)s)",
    )
    flights.add_data_options(parser)
    parser.add_argument("--master", default="local[2]", help="default: %(default)s")
    parser.add_argument(
        "--part", choices=(*PARTS, "all"), default="all", help="default: %(default)s"
    )
    parser.add_argument(
        "--variants",
        type=_variants,
        default=_spark_io.VARIANTS,
        help="Spark reads to time, comma-separated (default: plain,jvm,python)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="directory for the JSON (default: bench/results)"
    )
    return parser


def _flights(data: Path | None, rows: int) -> pa.Table:
    if data is None:
        log(f"making the synthetic flights table ({rows} rows)")
        return flights.flights_table(rows)
    table = pq.read_table(data)
    missing = {f.name for f in _spark_io.CSV_SCHEMA.fields} - set(table.column_names)
    if missing:
        raise BenchError(f"{data}: missing columns {', '.join(sorted(missing))}")
    return table


def _spark_part(
    root: Path, table: pa.Table, ring: KeyRing, args: argparse.Namespace
) -> tuple[_spark_io.Inputs, _spark_io.SparkOutcome]:
    inputs = _spark_io.prepare_inputs(table, root, ring, KEY_ID)
    spark = secure_session(
        root, args.master, f"bench-{NAME.replace('_', '-')}", {"spark.sql.shuffle.partitions": "8"}
    )
    try:
        outcome = _spark_io.spark_benchmark(spark, inputs, ring, args.rounds, args.variants)
    finally:
        spark.stop()
    return inputs, outcome


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    data: Path | None = None if args.data is None else args.data.resolve()
    if data is not None and not data.is_file():
        parser.error(f"--data {data}: no such file")
    parts = PARTS if args.part == "all" else (args.part,)
    load_before = os.getloadavg()
    if load_before[0] >= 1.0:
        log(f"warning: load average {load_before[0]:.1f} before start: timings will be noisy")
    ring = KeyRing({KEY_ID: os.urandom(32)})
    extra: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    outcome = _spark_io.SparkOutcome()
    try:
        with tempfile.TemporaryDirectory(prefix="trustedml-bench-", dir="/tmp") as tmp:
            root = Path(tmp)
            if "file" in parts:
                log(f"raw AES-256-GCM: best of {_file_io.RAW_REPEATS} x {args.raw_mib} MiB")
                raw_encrypt, raw_decrypt = _file_io.raw_aesgcm(args.raw_mib, _file_io.RAW_REPEATS)
                file_runs = _file_io.file_benchmark(root, args.size_mb, args.rounds, ring, KEY_ID)
                file_rows, ceiling = _file_io.file_summary(raw_encrypt, raw_decrypt, file_runs)
                rows += file_rows
                extra.update(
                    raw_aesgcm_mib_per_s={"encrypt": raw_encrypt, "decrypt": raw_decrypt},
                    file_runs=[asdict(r) for r in file_runs],
                    io_ceiling=ceiling,
                )
            if "spark" in parts:
                table = _flights(data, args.rows)
                inputs, outcome = _spark_part(root, table, ring, args)
                spark_rows = _spark_io.spark_summary(outcome)
                rows += spark_rows
                extra.update(
                    spark_inputs={
                        "rows": inputs.rows,
                        "wide_columns": inputs.wide_columns,
                        "bytes": inputs.bytes,
                    },
                    spark_medians=_spark_io.medians(outcome),
                    spark_runs=[asdict(r) for r in outcome.runs],
                    spark_failures=outcome.failures,
                )
    except (BenchError, TrustedMLError) as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 1
    load_after = os.getloadavg()

    number = 0
    if "file" in parts:
        number += 1
        _file_io.print_file_table(
            file_rows,
            ceiling,
            f"{NAME} {number}/{len(parts)}: file throughput ({args.size_mb} MiB file, median"
            f" of {args.rounds}; raw: best of {_file_io.RAW_REPEATS} x {args.raw_mib} MiB)",
        )
    if "spark" in parts:
        number += 1
        _spark_io.print_spark_table(
            spark_rows,
            f"{NAME} {number}/{len(parts)}: Spark reads, secure session {args.master},"
            f" {inputs.rows} rows, median of {args.rounds} (seconds)",
        )
        agreed = [
            f"{r.case} {r.variant}"
            for r in outcome.runs
            if r.round == 1 and r.variant != "plain" and not _spark_io.failed(outcome, r)
        ]
        if agreed:
            print(f"answers agree with plain: {', '.join(agreed)}")
    path = write_results(
        NAME,
        rows,
        {
            "settings": {
                "rounds": args.rounds,
                "size_mib": args.size_mb,
                "master": args.master,
                "parts": list(parts),
                "variants": list(args.variants),
                "data": str(data) if data is not None else f"synthetic flights ({args.rows} rows)",
                "wide_extra_columns": list(_wide.EXTRA),
                "chunk_bytes": _file_io.CHUNK,
                "raw_repeats": _file_io.RAW_REPEATS,
                "raw_mib": args.raw_mib,
            },
            "goals": {
                "file_ratio_vs_raw_at_least": _file_io.FILE_GOAL,
                "spark_ratio_jvm_over_plain_at_most": _spark_io.GOAL,
                "spark_moonshot": _spark_io.MOONSHOT,
            },
            "load_average": {"before": load_before, "after": load_after},
            **extra,
        },
        args.out,
    )
    print(f"wrote {path}")
    for key, why in outcome.failures.items():
        print(f"{NAME}: {key}: {why}", file=sys.stderr)
    return 1 if outcome.failures else 0
