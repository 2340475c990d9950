"""LeNet, 2 epochs, through `trustedml example lenet`: in local mode and on a secure 2-host
standalone cluster on the overlay (TorchDistributor's 2 processes on the 2 hosts), for
bench/cluster.py. Wall seconds of the whole command (Spark start, training, evaluation),
and the accuracy it reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import ml
from bench._cluster_hosts import overlay_cluster
from bench._tpch_driver import BenchError, tail
from trustedml import Secret, TrustedMLError
from trustedml.keys import KeyDirectory


def _lenet() -> ml.Workload:
    # bench/ml.py's LeNet without --model-out: rank 0 saves the model where it runs, on
    # a worker, whose executors get no KEK from the driver (in cluster mode keys come
    # only through the broker, after attestation). Both runs train and evaluate alike.
    full = next(w for w in ml.workloads(Path()) if w.name == "lenet")
    return ml.Workload(full.name, ("--max-epoch", "2"), full.metrics)


def _measure(run: str, options: list[str], base: Path) -> dict[str, Any]:
    log = base / f"lenet-{run}.log"
    try:
        seconds, metrics = ml._run(_lenet(), options, log)
    except RuntimeError as exc:
        return {"run": run, "not_measured": f"{exc}\n{tail(log, 15)}"}
    return {"run": run, "seconds": seconds, **metrics}


def lenet(root: Path, tee: str) -> dict[str, Any]:
    """Both runs: {"rows": [{"run", "seconds", "accuracy"} or {"run", "not_measured"}],
    "cluster_over_local": the ratio of seconds, or None}."""
    base = root / "lenet"
    base.mkdir(parents=True, exist_ok=True)
    common = ml.example_options(base)
    keys = KeyDirectory(base / "keys")
    passphrase = Secret((base / "passphrase").read_text(encoding="utf-8"))
    local = _measure("local", common, base)
    try:
        with overlay_cluster(base, keys, passphrase, tee) as (master, driver_host):
            on_cluster = ["--master", master, "--driver-host", driver_host, *common]
            cluster = _measure("cluster", on_cluster, base)
    except (ImportError, BenchError, TrustedMLError) as exc:
        cluster = {"run": "cluster", "not_measured": f"the cluster did not start: {exc}"}
    ratio = None
    if "seconds" in local and "seconds" in cluster:
        ratio = cluster["seconds"] / local["seconds"]
    return {"rows": [local, cluster], "cluster_over_local": ratio}
