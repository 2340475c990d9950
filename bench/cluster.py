"""TPC-H on a secure 2-host Spark standalone cluster vs a plain one, in one run, same data.

The tables (scale factor ``--sf``, default 1) and the 22 query texts are made offline by
duckdb's tpch extension from the `duckdb-extension-tpch` package (pip install -e
'.[bench]'), written as Parquet into a temporary directory at benchmark time (kept only
under --work; never part of the repository).
Two clusters run side by side, each a master on the gateway of a test network
(tests/cluster/netns.py) and one worker in each of two network namespaces: the secure
one with the daemons under ``--tee`` (default sim) and the secure settings, the plain
one with none. One driver per cluster stays up for the whole run and the two take turns
query by query (the order alternates), so both see the same machine load. Every answer
is compared: secure vs plain row by row after sorting (numbers within 1e-6), and both
vs duckdb's own answer. Reported: per-query seconds (``spark.sql(q).collect()`` in the
driver, median over ``--rounds``), the ratio secure/plain and its geometric mean.
Published anchors: SGX PySpark under SCONE +22% on TPC-H; Opaque SQL about 13.9x
geometric mean on TPC-H SF1.

LeNet (2 epochs, `trustedml example lenet`) then runs in local mode and on a secure
2-host cluster on the overlay (the only way training may cross hosts), wall seconds and
accuracy of each (bench/_cluster_lenet.py). ``--part tpch|lenet`` runs one of the two.

``--local`` runs both TPC-H drivers in local mode instead (no namespaces needed: a dry
run; no LeNet on a cluster then).
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import _tpch
from bench._report import positive_int, print_table, write_results
from bench._tpch_driver import BenchError, Driver, DriverError
from trustedml import (
    PlainSparkConfig,
    Secret,
    SecureSparkConfig,
    SparkSettings,
    TrustedMLError,
    init_key_directory,
)
from trustedml.keys import KeyDirectory, ScryptParams

NAME = "cluster"
MODES = ("secure", "plain")
GOAL = 1.25
# Same for both configurations. A few shuffle partitions per core: Spark's 200 default
# makes SF1's small stages mostly task overhead on two one-core workers.
SPARK_EXTRA = {"spark.sql.shuffle.partitions": "8", "spark.executor.memory": "2g"}


@dataclass(frozen=True)
class Timing:
    query: int
    mode: str
    round: int
    seconds: float


@dataclass(frozen=True)
class Env:
    """What the drivers need: where the tables are, the keys, and scratch space."""

    root: Path
    data: Path
    keys: KeyDirectory
    passphrase: Secret


def _parser() -> argparse.ArgumentParser:
    parser = _tpch.run_parser(NAME, __doc__, "--sf", rounds=1)
    parser.add_argument(
        "--work", type=Path, default=None, help="keep tables, logs and answers here"
    )
    parser.add_argument("--tee", default="sim", help="secure daemons' TEE (default: sim)")
    parser.add_argument("--local", action="store_true", help="local-mode drivers, no clusters")
    parser.add_argument(
        "--part",
        choices=("all", "tpch", "lenet"),
        default="all",
        help="TPC-H, LeNet cluster vs local, or both (default)",
    )
    parser.add_argument(
        "--timeout", type=positive_int, default=1800, help="seconds per query (default: 1800)"
    )
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _settings(mode: str, env: Env, master: str, host: str) -> SparkSettings:
    scratch = env.root / f"scratch-{mode}"
    scratch.mkdir(exist_ok=True)
    common: dict[str, Any] = {
        "master": master,
        "local_ip": host,
        "ui": False,
        "local_dir": scratch,
        "extra": SPARK_EXTRA,
    }
    if mode == "secure":
        return SecureSparkConfig.from_key_directory(env.keys, env.passphrase, **common)
    return PlainSparkConfig(**common)


@contextlib.contextmanager
def _local_masters(env: Env) -> Iterator[dict[str, SparkSettings]]:
    yield {mode: _settings(mode, env, "local[2]", "127.0.0.1") for mode in MODES}


def run_queries(
    drivers: dict[str, Driver], numbers: Sequence[int], rounds: int, timeout: float
) -> tuple[list[Timing], dict[str, dict[int, list[list[Any]]]]]:
    """Each query ``rounds`` times in each driver, taking turns; the first answer of each."""
    timings: list[Timing] = []
    answers: dict[str, dict[int, list[list[Any]]]] = {mode: {} for mode in MODES}
    for i, number in enumerate(numbers):
        for r in range(rounds):
            # Alternating who goes first keeps caches and JIT warm-up from favouring one.
            order = MODES if (i + r) % 2 == 0 else MODES[::-1]
            for mode in order:
                answer = drivers[mode].ask(number, timeout)
                timings.append(Timing(number, mode, r + 1, answer.seconds))
                answers[mode].setdefault(number, answer.rows)
                _log(f"Q{number:<2} round {r + 1} {mode:<6} {answer.seconds:8.2f} s")
    return timings, answers


def summarise(
    timings: Sequence[Timing],
    answers: dict[str, dict[int, list[list[Any]]]],
    reference: dict[int, list[list[Any]]],
) -> list[dict[str, Any]]:
    """One row per query: median seconds per mode, the ratio, and the answer checks."""
    timed = ((t.query, t.mode, t.seconds) for t in timings)
    return _tpch.summarise(timed, answers, reference, "secure", "plain")


def tpch(args: argparse.Namespace, numbers: Sequence[int], root: Path) -> dict[str, Any]:
    """Make the tables, run the queries on both configurations; the results payload."""
    data = root / f"tpch-sf{args.sf:g}"
    prepared = _tpch.prepare(args.sf, data, numbers)
    _log(f"TPC-H SF {args.sf:g}: tables and duckdb's answers in {prepared.seconds:.1f} s")
    reference, queries = prepared.reference, prepared.queries
    passphrase = Secret(secrets.token_urlsafe(32))
    keys = init_key_directory(root / "keys", passphrase, kdf=ScryptParams(log2_n=14))
    env = Env(root, data, keys, passphrase)
    masters = _local_masters(env) if args.local else _cluster_masters(env, args.tee)
    with masters as settings:
        drivers = {
            mode: Driver(mode, settings[mode], data, queries, root / f"driver-{mode}")
            for mode in MODES
        }
        try:
            for driver in drivers.values():
                driver.workdir.mkdir()
                driver.start()
            for driver in drivers.values():
                driver.wait_ready(args.timeout)
            timings, answers = run_queries(drivers, numbers, args.rounds, args.timeout)
        finally:
            codes = {mode: driver.stop() for mode, driver in drivers.items()}
    bad = {mode: code for mode, code in codes.items() if code != 0}
    if bad:
        raise DriverError(f"drivers exited with {bad}")
    rows = summarise(timings, answers, reference)
    return {
        "rows": rows,
        "timings": [asdict(t) for t in timings],
        "geomean_ratio": _tpch.geometric_mean(r["ratio"] for r in rows),
    }


def _cluster_masters(
    env: Env, tee: str
) -> contextlib.AbstractContextManager[dict[str, SparkSettings]]:
    # Imported when used: --local needs neither trustedml.cluster nor the test hosts.
    from bench._cluster_hosts import two_clusters

    return two_clusters(
        env.root,
        env.keys,
        env.passphrase,
        tee,
        lambda mode, master, host: _settings(mode, env, master, host),
    )


def _print_tpch(args: argparse.Namespace, result: dict[str, Any]) -> None:
    rows = result["rows"]
    _tpch.print_queries(
        f"{NAME}: TPC-H SF {args.sf:g}, {_where(args)}, {args.rounds} round(s)",
        rows,
        "secure",
        result["geomean_ratio"],
        GOAL,
    )
    print("published anchors: SGX PySpark under SCONE +22% on TPC-H; Opaque SQL ~13.9x (SF1)")
    _tpch.print_duckdb_differences(rows)


def _print_lenet(result: dict[str, Any]) -> None:
    print_table(
        f"{NAME}: LeNet 2 epochs (`trustedml example lenet`), secure, wall seconds",
        ("run", "seconds", "accuracy"),
        [
            (r["run"], f"{r['seconds']:.1f}", f"{r['accuracy']:.4f}")
            if "seconds" in r
            else (r["run"], "not measured", "-")
            for r in result["rows"]
        ],
    )
    for r in result["rows"]:
        if "not_measured" in r:
            print(f"LeNet {r['run']}: not measured: {r['not_measured']}")
    if result["cluster_over_local"] is not None:
        print(f"LeNet cluster/local: {result['cluster_over_local']:.3f}")


def _where(args: argparse.Namespace) -> str:
    return "local mode" if args.local else f"2-host standalone clusters (--tee {args.tee})"


def _settings_record(args: argparse.Namespace, numbers: Sequence[int]) -> dict[str, Any]:
    return {
        "part": args.part,
        "scale_factor": args.sf,
        "queries": list(numbers),
        "rounds": args.rounds,
        "deployment": _where(args),
        "spark_extra": SPARK_EXTRA,
        "rewrites": [{"name": w.name, "why": w.why} for w in _tpch.REWRITES],
        "goal_geomean_ratio": GOAL,
    }


def _run_parts(
    args: argparse.Namespace, numbers: Sequence[int], root: Path
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    tpch_result = tpch(args, numbers, root) if args.part in ("all", "tpch") else None
    lenet_result = None
    if args.part in ("all", "lenet"):
        if args.local:
            why = "--local: no cluster to train on"
            lenet_result = {
                "rows": [{"run": "cluster", "not_measured": why}],
                "cluster_over_local": None,
            }
        else:
            from bench._cluster_lenet import lenet

            lenet_result = lenet(root, args.tee)
    return tpch_result, lenet_result


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        numbers = _tpch.parse_queries(args.queries)
    except ValueError as exc:
        _parser().error(str(exc))
    with contextlib.ExitStack() as stack:
        root = _tpch.work_root(stack, args.work)
        try:
            tpch_result, lenet_result = _run_parts(args, numbers, root)
        except (_tpch.TpchError, BenchError, TrustedMLError) as exc:
            print(f"{NAME}: {exc}", file=sys.stderr)
            return 1
    extra: dict[str, Any] = {"settings": _settings_record(args, numbers)}
    if tpch_result is not None:
        _print_tpch(args, tpch_result)
        extra.update(tpch_result)
    if lenet_result is not None:
        _print_lenet(lenet_result)
        extra["lenet"] = lenet_result
    rows = extra.pop("rows", [])
    path = write_results(NAME, rows, extra, directory=args.out)
    print(f"wrote {path}")
    wrong = [r["query"] for r in rows if r["secure_vs_plain"] is not None]
    if wrong:
        print(f"{NAME}: secure and plain answers differ for Q{wrong}", file=sys.stderr)
        return 1
    return 0
