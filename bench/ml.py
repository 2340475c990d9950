"""The ML workloads of the examples at full size, secure vs plain Spark in the same run.

Each workload runs through the real command line (`trustedml example NAME`), once in
secure mode and once with `--insecure` (plain Spark; the data keys still come from the
same key directory), alternating the order per workload. Wall time is the whole
`trustedml example` process: Spark start, training, evaluation, encrypted model save.
"""

from __future__ import annotations

import argparse
import re
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

NAME = "ml"


@dataclass(frozen=True)
class Workload:
    name: str
    args: tuple[str, ...]
    # metric name -> (regex on stdout, goal, True if the goal is a floor)
    metrics: dict[str, tuple[str, float, bool]]
    max_seconds: float | None = None


def workloads(out: Path) -> list[Workload]:
    num = r"([0-9]+\.[0-9]+)"
    return [
        Workload(
            "lenet",
            ("--max-epoch", "2", "--model-out", str(out / "lenet.pt")),
            {"accuracy": (r"Epoch 2: Top1Accuracy is .*accuracy: " + num, 0.985, True)},
            max_seconds=30.0,
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


def _run(workload: Workload, mode: list[str], log: Path) -> tuple[float, dict[str, float]]:
    argv = [sys.executable, "-m", "trustedml", "example", *mode, workload.name, *workload.args]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{workload.name} exited {proc.returncode}; see {log}")
    found: dict[str, float] = {}
    for metric, (pattern, _, _) in workload.metrics.items():
        matches = re.findall(pattern, proc.stdout, re.MULTILINE)
        if not matches:
            raise RuntimeError(f"{workload.name}: no {metric} in its output; see {log}")
        found[metric] = float(matches[-1])
    return seconds, found


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m bench {NAME}", description=__doc__)
    parser.add_argument("--only", action="append", help="run only this workload (repeatable)")
    parser.add_argument("--logs", type=Path, help="keep the workloads' output here")
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
            result: dict[str, tuple[float, dict[str, float]]] = {}
            order = ("secure", "plain") if i % 2 == 0 else ("plain", "secure")
            for mode in order:
                out = root / "out" / mode
                out.mkdir(parents=True, exist_ok=True)
                moved = tuple(a.replace(str(root / "out"), str(out)) for a in workload.args)
                w = Workload(workload.name, moved, workload.metrics, workload.max_seconds)
                print(f"{workload.name} ({mode})...", file=sys.stderr, flush=True)
                try:
                    result[mode] = _run(w, modes[mode], logs / f"{workload.name}-{mode}.log")
                except RuntimeError as exc:
                    print(f"{NAME}: {exc}", file=sys.stderr)
                    return 1
            secs = {m: result[m][0] for m in result}
            metrics = result["secure"][1]
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
                    "metrics_plain": result["plain"][1],
                    "seconds_secure": secs["secure"],
                    "seconds_plain": secs["plain"],
                    "ratio": secs["secure"] / secs["plain"],
                    "goals_met": goals,
                    "ratio_goal_met": secs["secure"] / secs["plain"] <= 1.10,
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
                ", ".join(f"{k}:{'yes' if v else 'NO'}" for k, v in r["goals_met"].items())
                + f", ratio<=1.10:{'yes' if r['ratio_goal_met'] else 'NO'}",
            )
            for r in rows
        ],
    )
    path = write_results(NAME, rows)
    print(f"wrote {path}")
    return 0
