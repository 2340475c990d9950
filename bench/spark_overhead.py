"""What the secure Spark configuration costs: secure vs plain spark-submit of a
shuffle-heavy job (bench/apps/shuffle_job.py) over a flights table: by default the
seeded synthetic one of bench/flights.py (3M rows), or ``--data FILE.parquet``."""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import flights
from bench._report import positive_int, print_table, write_results
from trustedml import (
    PlainSparkConfig,
    Secret,
    SecureSparkConfig,
    SparkSettings,
    TrustedMLError,
    init_key_directory,
    submit,
)
from trustedml.keys import ScryptParams

NAME = "spark_overhead"
APP = Path(__file__).resolve().parent / "apps" / "shuffle_job.py"
MODES = ("secure", "plain")
LOG_TAIL_LINES = 30


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class Run:
    round: int
    mode: str
    job_seconds: float
    wall_seconds: float
    check: str


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m bench {NAME}", description=__doc__)
    parser.add_argument("--rounds", type=positive_int, default=3, help="default: %(default)s")
    flights.add_data_options(parser)
    parser.add_argument("--master", default="local[2]", help="default: %(default)s")
    return parser


def _tail(log: Path) -> str:
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _bench_values(stdout: str) -> dict[str, str]:
    values: dict[str, list[str]] = {"BENCH_SECONDS": [], "BENCH_CHECK": []}
    for line in stdout.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key in values:
            values[key].append(value)
    for key, found in values.items():
        if len(found) != 1:
            raise BenchError(f"expected one {key}= line from the job, got {len(found)}")
    return {key: found[0] for key, found in values.items()}


def run_once(
    settings: SparkSettings, data: Path, workdir: Path, log: Path, round_number: int
) -> Run:
    out_path = log.with_suffix(".out")
    with out_path.open("w", encoding="utf-8") as out, log.open("w", encoding="utf-8") as err:
        start = time.perf_counter()
        code = submit(APP, [str(data)], settings=settings, cwd=workdir, stdout=out, stderr=err)
        wall = time.perf_counter() - start
    if code != 0:
        raise BenchError(f"spark-submit exited with {code}; log tail:\n{_tail(log)}")
    values = _bench_values(out_path.read_text(encoding="utf-8"))
    return Run(
        round=round_number,
        mode="secure" if settings.secure else "plain",
        job_seconds=float(values["BENCH_SECONDS"]),
        wall_seconds=wall,
        check=values["BENCH_CHECK"],
    )


def _describe(data: Path | None, rows: int) -> str:
    if data is None:
        return f"synthetic flights (bench/flights.py, seed {flights.SEED}, {rows} rows)"
    return str(data)


def _order(round_index: int) -> tuple[str, ...]:
    # Alternating who goes first keeps JVM/page-cache warm-up from favouring one mode.
    return MODES if round_index % 2 == 0 else MODES[::-1]


def _summarise(runs: Sequence[Run]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    medians = {
        mode: {
            "job_seconds": statistics.median(r.job_seconds for r in runs if r.mode == mode),
            "wall_seconds": statistics.median(r.wall_seconds for r in runs if r.mode == mode),
        }
        for mode in MODES
    }
    ratios = {
        "job": medians["secure"]["job_seconds"] / medians["plain"]["job_seconds"],
        "wall": medians["secure"]["wall_seconds"] / medians["plain"]["wall_seconds"],
    }
    return medians, ratios


def benchmark(rounds: int, data: Path | None, master: str, rows: int = flights.ROWS) -> list[Run]:
    """``rounds`` secure and plain runs over ``data`` (None: the synthetic table)."""
    with tempfile.TemporaryDirectory(prefix="trustedml-bench-") as tmp:
        root = Path(tmp)
        if data is None:
            print(f"writing the synthetic flights table ({rows} rows)", file=sys.stderr)
            data = flights.write_flights(root / "flights.parquet", rows)
        # A throwaway key directory: its passphrase lives only for this process.
        passphrase = Secret(secrets.token_urlsafe(32))
        keys = init_key_directory(root / "keys", passphrase, kdf=ScryptParams(log2_n=14))
        scratch = {mode: root / f"scratch-{mode}" for mode in MODES}
        for path in scratch.values():
            path.mkdir()
        settings: dict[str, SparkSettings] = {
            "secure": SecureSparkConfig.from_key_directory(
                keys, passphrase, master=master, ui=False, local_dir=scratch["secure"]
            ),
            "plain": PlainSparkConfig(master=master, ui=False, local_dir=scratch["plain"]),
        }
        runs: list[Run] = []
        for i in range(rounds):
            for mode in _order(i):
                log = root / f"round{i + 1}-{mode}.log"
                run = run_once(settings[mode], data, root, log, i + 1)
                runs.append(run)
                print(
                    f"round {i + 1}/{rounds} {mode:<6} job {run.job_seconds:6.2f} s"
                    f"  wall {run.wall_seconds:6.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
        return runs


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    data: Path | None = None if args.data is None else args.data.resolve()
    if data is not None and not data.exists():
        parser.error(f"--data {data}: no such file or directory")
    try:
        runs = benchmark(args.rounds, data, args.master, args.rows)
    except (BenchError, TrustedMLError) as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 1

    checks = {r.check for r in runs}
    if len(checks) != 1:
        for r in runs:
            print(f"round {r.round} {r.mode}: BENCH_CHECK={r.check}", file=sys.stderr)
        print(f"{NAME}: secure and plain runs computed different results", file=sys.stderr)
        return 1

    medians, ratios = _summarise(runs)
    columns = (
        "mode",
        "runs",
        "median job s",
        "median wall s",
        "job secure/plain",
        "wall secure/plain",
    )
    rows = [
        {
            "mode": mode,
            "runs": sum(r.mode == mode for r in runs),
            "median_job_seconds": medians[mode]["job_seconds"],
            "median_wall_seconds": medians[mode]["wall_seconds"],
            "job_ratio": ratios["job"] if mode == "secure" else 1.0,
            "wall_ratio": ratios["wall"] if mode == "secure" else 1.0,
        }
        for mode in MODES
    ]
    print_table(
        f"{NAME}: {args.master}, {args.rounds} rounds",
        columns,
        [
            (
                row["mode"],
                row["runs"],
                f"{row['median_job_seconds']:.2f}",
                f"{row['median_wall_seconds']:.2f}",
                f"{row['job_ratio']:.3f}",
                f"{row['wall_ratio']:.3f}",
            )
            for row in rows
        ],
    )
    print(f"results agree: BENCH_CHECK={checks.pop()}")
    path = write_results(
        NAME,
        rows,
        {
            "settings": {
                "rounds": args.rounds,
                "master": args.master,
                "data": _describe(data, args.rows),
            },
            "check": runs[0].check,
            "medians": medians,
            "ratios": {"secure_over_plain": ratios},
            "runs": [asdict(r) for r in runs],
        },
    )
    print(f"wrote {path}")
    return 0
