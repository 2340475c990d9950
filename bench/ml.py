"""The ML workloads of the examples at full size, secure vs plain Spark in the same run.

Each workload runs through the real command line (`trustedml example NAME`), once in
secure mode and once with `--insecure` (plain Spark; the data keys still come from the
same key directory), alternating the order per workload. Wall time is the whole
`trustedml example` process: Spark start, training, evaluation, encrypted model save.

The workloads run with TRUSTEDML_PROFILE=1: the driver, the training launcher and the
training processes print timed phases (trustedml.ml._profile), and a second table
shows where the time of each TorchDistributor workload went, phase by phase, from the
moment `trustedml example` was started. The secure runs of lenet and text-classification
read an encrypted copy of their inputs (made first under the KEK "data"), as a real job
does; `--plaintext-inputs` gives them the plaintext dataset, as the plain runs get.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._report import print_table, write_results
from trustedml import LocalKeyStore, Secret, init_key_directory
from trustedml.keys import ScryptParams
from trustedml.ml._profile import ENV_PROFILE, MARK_LINE

NAME = "ml"


@dataclass(frozen=True)
class Workload:
    name: str
    args: tuple[str, ...]
    # metric name -> (regex on stdout, goal, True if the goal is a floor)
    metrics: dict[str, tuple[str, float, bool]]
    max_seconds: float | None = None
    max_ratio: float = 1.10  # secure / plain wall time


def workloads(out: Path) -> list[Workload]:
    num = r"([0-9]+\.[0-9]+)"
    return [
        Workload(
            "lenet",
            ("--max-epoch", "2", "--model-out", str(out / "lenet.pt")),
            {"accuracy": (r"Epoch 2: Top1Accuracy is .*accuracy: " + num, 0.990, True)},
            # Issue 15's acceptance, on a quiet machine.
            max_seconds=20.0,
            max_ratio=1.05,
        ),
        Workload(
            "text-classification",
            ("--model-out", str(out / "text.pt")),
            {"accuracy": (r"^accuracy: " + num, 0.76, True)},
        ),
        Workload(
            "xgboost-regressor",
            ("--model-out", str(out / "boston.json")),
            {"rmse": (r"^RMSE: " + num, 2.6, False)},
        ),
        Workload(
            "xgboost-classifier",
            ("--model-out", str(out / "pima.json")),
            {
                "accuracy": (r"^accuracy: " + num, 0.74, True),
                "auc": (r"^AUC: " + num, 0.82, True),
            },
        ),
        Workload("nyc-taxi-prep", ("--output", str(out / "taxi"), "--overwrite"), {}),
    ]


def example_options(root: Path) -> list[str]:
    """`trustedml example` options for a throwaway key directory made in ``root`` (its
    passphrase in a 0600 file there) holding the KEKs "models" and "data"."""
    passphrase = secrets.token_urlsafe(32)
    keys = init_key_directory(root / "keys", Secret(passphrase), kdf=ScryptParams(14))
    store = LocalKeyStore(keys, Secret(passphrase))
    store.create_kek("models")
    store.create_kek("data")
    pp = root / "passphrase"
    pp.write_text(passphrase)
    pp.chmod(0o600)
    return ["--keys", str(keys.path), "--passphrase-file", str(pp),
            "--kek", "models", "--kek", "data", "--no-ui"]  # fmt: skip


def phases(output: str, started: float, ended: float) -> dict[str, float]:
    """Seconds from ``started`` (wall clock) to each phase the workload's processes
    marked in ``output``, the last process to reach it (both ranks, for a rank's
    phase), in order; "exit" is when the command returned."""
    reached: dict[str, float] = {}
    for name, at, _pid in MARK_LINE.findall(output):
        reached[name] = max(reached.get(name, 0.0), float(at) - started)
    reached["exit"] = ended - started
    return dict(sorted(reached.items(), key=lambda item: item[1]))


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Run:
    seconds: float  # wall
    metrics: dict[str, float]
    phases: dict[str, float]
    cpu: float  # user + system seconds of every process of the run


def _run(workload: Workload, mode: list[str], log: Path) -> Run:
    argv = [sys.executable, "-m", "trustedml", "example", *mode, workload.name, *workload.args]
    env = {**os.environ, ENV_PROFILE: "1"}
    wall = time.time()
    cpu = _cpu_of_children()
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    seconds = time.perf_counter() - start
    # Every process of the run, each reaped by its parent (JVM, driver, training):
    # less sensitive to other load on the machine than the wall time.
    cpu = _cpu_of_children() - cpu
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{workload.name} exited {proc.returncode}; see {log}")
    found: dict[str, float] = {}
    for metric, (pattern, _, _) in workload.metrics.items():
        matches = re.findall(pattern, proc.stdout, re.MULTILINE)
        if not matches:
            raise RuntimeError(f"{workload.name}: no {metric} in its output; see {log}")
        found[metric] = float(matches[-1])
    return Run(seconds, found, phases(proc.stdout + proc.stderr, wall, wall + seconds), cpu)


def print_phases(rows: Sequence[dict[str, Any]]) -> None:
    """Per workload with marks: each phase's end (seconds since the command started)
    and its length, secure and plain side by side."""
    for r in rows:
        secure, plain = r["phases_secure"], r["phases_plain"]
        if len(secure) <= 1:
            continue
        names = list(secure) + [n for n in plain if n not in secure]
        table = []
        for name in names:
            cells: list[str] = [name]
            for marks in (secure, plain):
                if name not in marks:
                    cells += ["-", "-"]
                    continue
                previous = max((t for t in marks.values() if t < marks[name]), default=0.0)
                cells += [f"{marks[name]:.2f}", f"{marks[name] - previous:.2f}"]
            table.append(cells)
        print_table(
            f"ml: where {r['workload']}'s time went (seconds since `trustedml example` started)",
            ("phase reached", "secure at", "secure +", "plain at", "plain +"),
            table,
        )


def _encrypt_inputs(workload: Workload, root: Path, common: list[str]) -> tuple[str, ...]:
    """The workload's arguments with its input replaced by an encrypted copy (KEK "data")
    of the repository's dataset, made with `trustedml encrypt`."""
    option, dataset = {
        "lenet": ("--data-path", "mnist"),
        "text-classification": ("--file-path", "rotten_tomatoes.csv.bz2"),
    }.get(workload.name, (None, None))
    if option is None or dataset is None:
        return workload.args
    source = Path(__file__).resolve().parents[1] / "datasets" / dataset
    target = root / "encrypted" / (dataset + (".tml" if source.is_file() else ""))
    target.parent.mkdir(parents=True, exist_ok=True)
    keys = common[: common.index("--kek")]  # --keys K --passphrase-file P
    subprocess.run(
        [sys.executable, "-m", "trustedml", "encrypt", str(source), str(target),
         "--key-id", "data", *keys],
        check=True, capture_output=True,
    )  # fmt: skip
    return (*workload.args, option, str(target))


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m bench {NAME}", description=__doc__)
    parser.add_argument("--only", action="append", help="run only this workload (repeatable)")
    parser.add_argument("--logs", type=Path, help="keep the workloads' output here")
    parser.add_argument(
        "--plaintext-inputs",
        action="store_true",
        help="the secure runs read the plaintext dataset too (default: an encrypted copy)",
    )
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trustedml-bench-ml-") as tmp:
        root = Path(tmp)
        logs = args.logs or root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        common = example_options(root)
        modes = {"secure": common, "plain": ["--insecure", *common]}
        for i, workload in enumerate(workloads(root / "out")):
            if args.only and workload.name not in args.only:
                continue
            result: dict[str, Run] = {}
            secure_args = (
                workload.args if args.plaintext_inputs else _encrypt_inputs(workload, root, common)
            )
            order = ("secure", "plain") if i % 2 == 0 else ("plain", "secure")
            for mode in order:
                out = root / "out" / mode
                out.mkdir(parents=True, exist_ok=True)
                given = secure_args if mode == "secure" else workload.args
                moved = tuple(a.replace(str(root / "out"), str(out)) for a in given)
                w = Workload(
                    workload.name, moved, workload.metrics, workload.max_seconds, workload.max_ratio
                )
                print(f"{workload.name} ({mode})...", file=sys.stderr, flush=True)
                try:
                    result[mode] = _run(w, modes[mode], logs / f"{workload.name}-{mode}.log")
                except RuntimeError as exc:
                    print(f"{NAME}: {exc}", file=sys.stderr)
                    return 1
            secs = {m: result[m].seconds for m in result}
            metrics = result["secure"].metrics
            goals = {
                name: (metrics[name] >= goal) if floor else (metrics[name] <= goal)
                for name, (_, goal, floor) in workload.metrics.items()
            }
            if workload.max_seconds is not None:
                goals["seconds"] = secs["secure"] <= workload.max_seconds
            rows.append(
                {
                    "workload": workload.name,
                    "metrics_secure": metrics,
                    "metrics_plain": result["plain"].metrics,
                    "seconds_secure": secs["secure"],
                    "seconds_plain": secs["plain"],
                    "ratio": secs["secure"] / secs["plain"],
                    "goals_met": goals,
                    "max_ratio": workload.max_ratio,
                    "ratio_goal_met": secs["secure"] / secs["plain"] <= workload.max_ratio,
                    "cpu_secure": result["secure"].cpu,
                    "cpu_plain": result["plain"].cpu,
                    "phases_secure": result["secure"].phases,
                    "phases_plain": result["plain"].phases,
                    "encrypted_inputs": not args.plaintext_inputs,
                }
            )
    print_table(
        "ml: full workloads, secure vs plain Spark (wall seconds of `trustedml example`)",
        (
            "workload",
            "metric (secure)",
            "metric (plain)",
            "secure s",
            "plain s",
            "ratio",
            "cpu s (secure/plain)",
            "goals met",
        ),
        [
            (
                r["workload"],
                " ".join(f"{k}={v:.4f}" for k, v in r["metrics_secure"].items()) or "-",
                " ".join(f"{k}={v:.4f}" for k, v in r["metrics_plain"].items()) or "-",
                f"{r['seconds_secure']:.1f}",
                f"{r['seconds_plain']:.1f}",
                f"{r['ratio']:.3f}",
                f"{r['cpu_secure']:.1f}/{r['cpu_plain']:.1f}",
                ", ".join(f"{k}:{'yes' if v else 'NO'}" for k, v in r["goals_met"].items())
                + f", ratio<={r['max_ratio']:.2f}:{'yes' if r['ratio_goal_met'] else 'NO'}",
            )
            for r in rows
        ],
    )
    print_phases(rows)
    path = write_results(NAME, rows)
    print(f"wrote {path}")
    return 0
