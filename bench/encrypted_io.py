"""What encryption at rest costs: trusted-ml file encryption and decryption against
raw AES-256-GCM, and one Spark aggregate over encrypted vs plaintext CSV and Parquet
made from flights-3m.parquet. Sizes and rates are in MiB (2**20 bytes)."""

from __future__ import annotations

import argparse
import filecmp
import math
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from bench._report import print_table, write_results
from trustedml import (
    KeyRing,
    Secret,
    SecureSparkConfig,
    TrustedMLError,
    decrypt_file,
    encrypt_file,
    init_key_directory,
)
from trustedml.hazmat import framing
from trustedml.keys import ScryptParams
from trustedml.spark import read_encrypted, start_session

NAME = "encrypted_io"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/datasets/flights-3m.parquet"
MIB = 1 << 20
# The file format's default chunk: raw AES-GCM is measured on buffers of this size.
CHUNK = 1 << framing.DEFAULT_LOG2_CHUNK
KEY_ID = "bench"
# Raw AES-GCM: best of RAW_REPEATS passes over RAW_MIB of 1 MiB buffers.
RAW_REPEATS = 5
RAW_MIB = 128
# The format binds a 41-byte AAD into every chunk (header digest, index, final flag).
AAD_SIZE = 32 + 8 + 1
FILE_GOAL = 0.70  # trusted-ml MiB/s over raw AES-GCM MiB/s: at least this
SPARK_GOAL = 1.15  # encrypted over plaintext seconds: at most this
FORMATS = ("csv", "parquet")
VARIANTS = ("plain", "encrypted")
CSV_SCHEMA = StructType(
    [
        StructField("date", TimestampType()),
        StructField("delay", LongType()),
        StructField("distance", LongType()),
        StructField("origin", StringType()),
        StructField("destination", StringType()),
    ]
)
AVG_REL_TOL = 1e-9

# One aggregated row: origin, flights, summed delay, average distance.
AggRow = tuple[str | None, int, int | None, float | None]


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class FileRun:
    round: int
    op: str
    seconds: float
    mib_per_s: float


@dataclass(frozen=True)
class SparkRun:
    round: int  # 0: the untimed warm-up (recorded, left out of the medians)
    fmt: str
    variant: str
    load_seconds: float
    action_seconds: float


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m bench {NAME}", description=__doc__)
    parser.add_argument("--rounds", type=_positive_int, default=3, help="default: %(default)s")
    parser.add_argument(
        "--size-mb",
        type=_positive_int,
        default=256,
        help="MiB of random data for the file part (default: %(default)s)",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="default: %(default)s")
    parser.add_argument("--master", default="local[2]", help="default: %(default)s")
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- part 1: file throughput ------------------------------------------------------------


def raw_aesgcm(mib: int, repeats: int) -> tuple[list[float], list[float]]:
    """MiB/s of ``AESGCM.encrypt`` and ``decrypt`` over 1 MiB buffers, one per pass."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    buf = os.urandom(CHUNK)
    aad = os.urandom(AAD_SIZE)
    count = mib * MIB // CHUNK
    nonces = [framing.nonce(i) for i in range(count)]
    sealed = aead.encrypt(nonces[0], buf, aad)
    encrypt_rates, decrypt_rates = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for n in nonces:
            aead.encrypt(n, buf, aad)
        encrypt_rates.append(mib / (time.perf_counter() - start))
        start = time.perf_counter()
        for _ in nonces:
            aead.decrypt(nonces[0], sealed, aad)
        decrypt_rates.append(mib / (time.perf_counter() - start))
    return encrypt_rates, decrypt_rates


def _write_random(path: Path, mib: int) -> None:
    with path.open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(MIB))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_synced(src: Path, dst: Path) -> None:
    # encrypt_file and decrypt_file fsync their output; so does the I/O reference.
    shutil.copyfile(src, dst)
    _fsync(dst)


def file_benchmark(root: Path, mib: int, rounds: int, ring: KeyRing) -> list[FileRun]:
    src, copy = root / "random.bin", root / "random.copy"
    enc, dec = root / "random.bin.tml", root / "random.decrypted"
    _log(f"writing {mib} MiB of random data")
    _write_random(src, mib)
    size = src.stat().st_size
    ops: dict[str, tuple[Path, Callable[[], object]]] = {
        "copy": (copy, lambda: _copy_synced(src, copy)),
        "encrypt_file": (enc, lambda: encrypt_file(src, enc, key_id=KEY_ID, keystore=ring)),
        "decrypt_file": (dec, lambda: decrypt_file(enc, dec, keystore=ring)),
    }
    runs: list[FileRun] = []
    for i in range(rounds):
        # decrypt_file reads what encrypt_file wrote in the same round.
        for op, (target, action) in ops.items():
            target.unlink(missing_ok=True)
            start = time.perf_counter()
            action()
            seconds = time.perf_counter() - start
            run = FileRun(i + 1, op, seconds, size / MIB / seconds)
            runs.append(run)
            _log(f"round {run.round}/{rounds} {op:<12} {seconds:6.2f} s {run.mib_per_s:7.0f} MiB/s")
    if not filecmp.cmp(src, dec, shallow=False):
        raise BenchError(f"{dec} differs from {src} after encrypt_file + decrypt_file")
    return runs


# -- part 2: Spark over encrypted vs plaintext files --------------------------------------


@dataclass(frozen=True)
class Inputs:
    rows: int
    paths: dict[str, dict[str, Path]]  # format -> variant -> file
    bytes: dict[str, dict[str, int]]


def prepare_inputs(data: Path, root: Path, ring: KeyRing) -> Inputs:
    _log(f"writing plaintext CSV and Parquet from {data}")
    table = pq.read_table(data)
    missing = {f.name for f in CSV_SCHEMA.fields} - set(table.column_names)
    if missing:
        raise BenchError(f"{data}: missing columns {', '.join(sorted(missing))}")
    table = table.select([f.name for f in CSV_SCHEMA.fields])
    plain = {"csv": root / "flights.csv", "parquet": root / "flights.parquet"}
    pa_csv.write_csv(table, plain["csv"])
    pq.write_table(table, plain["parquet"])
    paths: dict[str, dict[str, Path]] = {}
    for fmt, path in plain.items():
        enc = path.with_name(path.name + ".tml")
        _log(f"encrypting {path.name}")
        encrypt_file(path, enc, key_id=KEY_ID, keystore=ring)
        paths[fmt] = {"plain": path, "encrypted": enc}
    sizes = {fmt: {v: p.stat().st_size for v, p in by.items()} for fmt, by in paths.items()}
    return Inputs(table.num_rows, paths, sizes)


def _load(spark: SparkSession, ring: KeyRing, fmt: str, variant: str, path: Path) -> DataFrame:
    if (fmt, variant) == ("csv", "plain"):
        return spark.read.csv(str(path), header=True, schema=CSV_SCHEMA)
    if (fmt, variant) == ("csv", "encrypted"):
        return read_encrypted(spark, path, "csv", keystore=ring, header=True, schema=CSV_SCHEMA)
    if (fmt, variant) == ("parquet", "plain"):
        return spark.read.parquet(str(path))
    return read_encrypted(spark, path, "parquet", keystore=ring)


def aggregate(df: DataFrame) -> list[AggRow]:
    rows = (
        df.groupBy("origin")
        .agg(
            F.count("*").alias("flights"),
            F.sum("delay").alias("delay"),
            F.avg("distance").alias("avg_distance"),
        )
        .collect()
    )
    result: list[AggRow] = [
        (
            r["origin"],
            int(r["flights"]),
            None if r["delay"] is None else int(r["delay"]),
            None if r["avg_distance"] is None else float(r["avg_distance"]),
        )
        for r in rows
    ]
    return sorted(result, key=lambda row: (row[0] is not None, row[0] or ""))


def differences(expected: Sequence[AggRow], got: Sequence[AggRow], limit: int = 5) -> list[str]:
    """Where two aggregates disagree (averages compared with a relative tolerance)."""
    if len(expected) != len(got):
        return [f"{len(expected)} groups vs {len(got)} groups"]
    diffs = []
    for want, have in zip(expected, got, strict=True):
        same_avg = (
            want[3] == have[3]
            if want[3] is None or have[3] is None
            else math.isclose(want[3], have[3], rel_tol=AVG_REL_TOL)
        )
        if want[:3] != have[:3] or not same_avg:
            diffs.append(f"expected {want}, got {have}")
    return diffs[:limit]


def _order(round_index: int) -> tuple[str, ...]:
    # Alternating who goes first keeps cache and JIT warm-up from favouring one variant.
    return VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]


def _timed(
    spark: SparkSession, ring: KeyRing, fmt: str, variant: str, path: Path, round_number: int
) -> tuple[SparkRun, list[AggRow]]:
    start = time.perf_counter()
    df = _load(spark, ring, fmt, variant, path)
    loaded = time.perf_counter()
    result = aggregate(df)
    done = time.perf_counter()
    return SparkRun(round_number, fmt, variant, loaded - start, done - loaded), result


def spark_benchmark(
    root: Path, inputs: Inputs, ring: KeyRing, rounds: int, master: str
) -> tuple[list[SparkRun], dict[str, list[AggRow]]]:
    """Warm-up runs (round 0) and timed runs, checked against each format's plain result."""
    # A throwaway key directory: its passphrase lives only for this process.
    passphrase = Secret(secrets.token_urlsafe(32))
    keys = init_key_directory(root / "keys", passphrase, kdf=ScryptParams(log2_n=14))
    scratch = root / "scratch"
    scratch.mkdir()
    settings = SecureSparkConfig.from_key_directory(
        keys,
        passphrase,
        master=master,
        ui=False,
        local_dir=scratch,
        extra={"spark.sql.shuffle.partitions": "8"},
    )
    _log(f"starting a secure Spark session ({master})")
    spark = start_session(settings, f"bench-{NAME.replace('_', '-')}")
    runs: list[SparkRun] = []
    expected: dict[str, list[AggRow]] = {}
    try:
        schedule: list[tuple[int, str, tuple[str, ...]]] = [(0, fmt, VARIANTS) for fmt in FORMATS]
        schedule += [(i + 1, fmt, _order(i)) for i in range(rounds) for fmt in FORMATS]
        for round_number, fmt, order in schedule:
            for variant in order:
                run, result = _timed(
                    spark, ring, fmt, variant, inputs.paths[fmt][variant], round_number
                )
                runs.append(run)
                label = "warm-up" if round_number == 0 else f"round {round_number}/{rounds}"
                _log(
                    f"{label:<11} {fmt:<7} {variant:<9} load {run.load_seconds:6.2f} s"
                    f"  action {run.action_seconds:6.2f} s"
                )
                if variant == "plain" and fmt not in expected:
                    expected[fmt] = result
                    flights = sum(row[1] for row in result)
                    if flights != inputs.rows:
                        raise BenchError(
                            f"{fmt} plain: counted {flights} flights, the data has {inputs.rows}"
                        )
                diffs = differences(expected[fmt], result)
                if diffs:
                    raise BenchError(
                        f"{fmt} {variant} (round {round_number}) disagrees with {fmt} plain:\n  "
                        + "\n  ".join(diffs)
                    )
    finally:
        spark.stop()
    return runs, expected


# -- summary ------------------------------------------------------------------------------


def _met(value: float, goal: float, at_least: bool) -> bool:
    return value >= goal if at_least else value <= goal


def file_rows(
    raw_encrypt: Sequence[float], raw_decrypt: Sequence[float], runs: Sequence[FileRun]
) -> list[dict[str, Any]]:
    def median_rate(op: str) -> float:
        return statistics.median(r.mib_per_s for r in runs if r.op == op)

    raw = {"encrypt": max(raw_encrypt), "decrypt": max(raw_decrypt)}
    rows: list[dict[str, Any]] = []
    for kind in ("encrypt", "decrypt"):
        rows.append(
            {
                "part": "file",
                "operation": f"raw AES-GCM {kind} (1 MiB buffers, best)",
                "mib_per_s": raw[kind],
                "ratio_vs_raw": 1.0,
                "goal": None,
                "goal_met": None,
            }
        )
        ratio = median_rate(f"{kind}_file") / raw[kind]
        rows.append(
            {
                "part": "file",
                "operation": f"{kind}_file (median)",
                "mib_per_s": median_rate(f"{kind}_file"),
                "ratio_vs_raw": ratio,
                "goal": {"ratio_vs_raw_at_least": FILE_GOAL},
                "goal_met": _met(ratio, FILE_GOAL, at_least=True),
            }
        )
    rows.append(
        {
            "part": "file",
            "operation": "copyfile + fsync (I/O reference, median)",
            "mib_per_s": median_rate("copy"),
            "ratio_vs_raw": None,
            "goal": None,
            "goal_met": None,
        }
    )
    return rows


def spark_medians(runs: Sequence[SparkRun]) -> dict[str, dict[str, dict[str, float]]]:
    timed = [r for r in runs if r.round > 0]
    return {
        fmt: {
            variant: {
                "load_seconds": statistics.median(
                    r.load_seconds for r in timed if (r.fmt, r.variant) == (fmt, variant)
                ),
                "action_seconds": statistics.median(
                    r.action_seconds for r in timed if (r.fmt, r.variant) == (fmt, variant)
                ),
            }
            for variant in VARIANTS
        }
        for fmt in FORMATS
    }


def spark_rows(medians: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for fmt in FORMATS:
        plain, enc = medians[fmt]["plain"], medians[fmt]["encrypted"]
        ratio = enc["action_seconds"] / plain["action_seconds"]
        total_ratio = (enc["load_seconds"] + enc["action_seconds"]) / (
            plain["load_seconds"] + plain["action_seconds"]
        )
        rows.append(
            {
                "part": "spark",
                "format": fmt,
                "plain_action_seconds": plain["action_seconds"],
                "encrypted_action_seconds": enc["action_seconds"],
                "ratio_encrypted_over_plain": ratio,
                "plain_load_seconds": plain["load_seconds"],
                "encrypted_load_seconds": enc["load_seconds"],
                "total_ratio_encrypted_over_plain": total_ratio,
                "goal": {"ratio_encrypted_over_plain_at_most": SPARK_GOAL},
                "goal_met": _met(ratio, SPARK_GOAL, at_least=False),
            }
        )
    return rows


def _yes_no(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "NO")


def _print_tables(
    file_part: Sequence[dict[str, Any]], spark_part: Sequence[dict[str, Any]], args: Any
) -> None:
    print_table(
        f"{NAME} 1/2: file throughput, {args.size_mb} MiB, median of {args.rounds} rounds;"
        f" raw AES-GCM best of {RAW_REPEATS} x {RAW_MIB} MiB",
        ("operation", "MiB/s", "/ raw AES-GCM", "goal", "met"),
        [
            (
                row["operation"],
                f"{row['mib_per_s']:.0f}",
                "" if row["ratio_vs_raw"] is None else f"{row['ratio_vs_raw']:.3f}",
                "" if row["goal"] is None else f">= {FILE_GOAL:.2f}",
                _yes_no(row["goal_met"]),
            )
            for row in file_part
        ],
    )
    print_table(
        f"{NAME} 2/2: groupBy(origin) over flights, secure Spark {args.master},"
        f" median of {args.rounds} rounds (seconds)",
        (
            "format",
            "plain action",
            "encrypted action",
            "enc/plain",
            "goal",
            "met",
            "plain load",
            "encrypted load",
            "enc/plain incl. load",
        ),
        [
            (
                row["format"],
                f"{row['plain_action_seconds']:.2f}",
                f"{row['encrypted_action_seconds']:.2f}",
                f"{row['ratio_encrypted_over_plain']:.3f}",
                f"<= {SPARK_GOAL:.2f}",
                _yes_no(row["goal_met"]),
                f"{row['plain_load_seconds']:.2f}",
                f"{row['encrypted_load_seconds']:.2f}",
                f"{row['total_ratio_encrypted_over_plain']:.3f}",
            )
            for row in spark_part
        ],
    )


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    data: Path = args.data.resolve()
    if not data.is_file():
        parser.error(f"--data {data}: no such file")
    ring = KeyRing({KEY_ID: os.urandom(32)})
    try:
        _log(f"raw AES-256-GCM: best of {RAW_REPEATS} x {RAW_MIB} MiB")
        raw_encrypt, raw_decrypt = raw_aesgcm(RAW_MIB, RAW_REPEATS)
        with tempfile.TemporaryDirectory(prefix="trustedml-bench-", dir="/tmp") as tmp:
            root = Path(tmp)
            file_runs = file_benchmark(root, args.size_mb, args.rounds, ring)
            inputs = prepare_inputs(data, root, ring)
            spark_runs, expected = spark_benchmark(root, inputs, ring, args.rounds, args.master)
    except (BenchError, TrustedMLError) as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 1

    file_part = file_rows(raw_encrypt, raw_decrypt, file_runs)
    medians = spark_medians(spark_runs)
    spark_part = spark_rows(medians)
    _print_tables(file_part, spark_part, args)
    groups = {fmt: len(rows) for fmt, rows in expected.items()}
    print(f"results agree: plain and encrypted, {inputs.rows} flights, {groups['csv']} origins")
    path = write_results(
        NAME,
        [*file_part, *spark_part],
        {
            "settings": {
                "rounds": args.rounds,
                "size_mib": args.size_mb,
                "master": args.master,
                "data": str(data),
                "chunk_bytes": CHUNK,
                "raw_repeats": RAW_REPEATS,
                "raw_mib": RAW_MIB,
            },
            "goals": {
                "file_ratio_vs_raw_at_least": FILE_GOAL,
                "spark_ratio_encrypted_over_plain_at_most": SPARK_GOAL,
            },
            "raw_aesgcm_mib_per_s": {"encrypt": raw_encrypt, "decrypt": raw_decrypt},
            "file_runs": [asdict(r) for r in file_runs],
            "spark_inputs": {
                "rows": inputs.rows,
                "bytes": inputs.bytes,
            },
            "spark_medians": medians,
            "spark_runs": [asdict(r) for r in spark_runs],
        },
    )
    print(f"wrote {path}")
    return 0
