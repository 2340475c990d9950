"""LeNet, 2 epochs, through `trustedml example lenet`: in local mode and on a secure 2-host
standalone cluster on the overlay (TorchDistributor's 2 processes on the 2 hosts), for
bench/cluster.py. Wall seconds of the whole command, and the accuracy it reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import ml
from bench._cluster_hosts import overlay_cluster
from bench._tpch_driver import BenchError, tail
from trustedml import Secret, TrustedMLError
from trustedml.keys import KeyDirectory

RUNS = ("local", "cluster")


def _lenet(out: Path) -> ml.Workload:
    return next(w for w in ml.workloads(out) if w.name == "lenet")


def lenet(root: Path, tee: str) -> dict[str, Any]:
    """Both runs; {"rows": [...], "cluster_over_local": ratio} or {"not_measured": why}."""
    base = root / "lenet"
    base.mkdir(parents=True, exist_ok=True)
    common = ml.example_options(base)
    keys = KeyDirectory(base / "keys")
    passphrase = Secret((base / "passphrase").read_text(encoding="utf-8"))
    seconds: dict[str, float] = {}
    metrics: dict[str, dict[str, float]] = {}
    try:
        seconds["local"], metrics["local"] = ml._run(
            _lenet(base / "out-local"), common, base / "lenet-local.log"
        )
        with overlay_cluster(base, keys, passphrase, tee) as (master, driver_host):
            cluster = ["--master", master, "--driver-host", driver_host, *common]
            seconds["cluster"], metrics["cluster"] = ml._run(
                _lenet(base / "out-cluster"), cluster, base / "lenet-cluster.log"
            )
    except (RuntimeError, BenchError, TrustedMLError) as exc:
        logs = sorted(base.glob("lenet-*.log"), key=lambda p: p.stat().st_mtime)
        detail = f"\n{tail(logs[-1], 15)}" if logs else ""
        return {"not_measured": f"{exc}{detail}", "rows": []}
    rows = [{"run": run, "seconds": seconds[run], **metrics[run]} for run in RUNS]
    return {"rows": rows, "cluster_over_local": seconds["cluster"] / seconds["local"]}
