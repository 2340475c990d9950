"""What the TorchDistributor workloads share on the driver side: checks before Spark
starts, the training run itself, and mapping errors to exit codes."""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from trustedml.errors import ConfigError, TrustedMLError, reworded
from trustedml.ml._datasets import missing_default
from trustedml.ml._io import check_inputs, check_key
from trustedml.ml._launch import Entry, Launcher
from trustedml.ml._profile import mark
from trustedml.runtime import on_standalone_cluster


class _Config(Protocol):
    def check(self) -> None: ...


def resolved_input(option: str, given: Path, default: Path) -> Path:
    """``given``, resolved; a ConfigError naming ``option`` when it is the absent default."""
    missing = missing_default(option, given, default)
    if missing is not None:
        raise ConfigError(missing)
    return given.resolve()


def check_model_out(model_out: Path | None, key_id: str) -> None:
    """Fail before training, in one line, when the model could not be saved."""
    if model_out is None:
        return
    if not model_out.resolve().parent.is_dir():
        raise ConfigError(f"--model-out {model_out}: its directory does not exist")
    try:
        check_key(key_id)
    except TrustedMLError as exc:
        raise reworded(exc, f"--model-key-id {key_id}: {exc}") from None


def check_and_train(
    app_name: str,
    entry: Entry,
    config: _Config,
    args: argparse.Namespace,
    *inputs: Path,
) -> int:
    """Check ``config``, the ``inputs`` and where the model goes on the driver, then
    train with :func:`train_on_spark`."""
    config.check()
    # Fail here, in one line, rather than in both training processes.
    check_inputs(*inputs)
    check_model_out(args.model_out, args.model_key_id)
    mark("driver-checked")
    return train_on_spark(app_name, entry, config)


def train_on_spark(app_name: str, entry: Entry, *args: Any) -> int:
    """Run ``entry`` in the training processes and report; Spark only where needed.

    On this host (a local master) the launcher of the training processes starts at
    once and trains without a SparkContext: pyspark's local TorchDistributor used none
    either, and starting one only delayed training. On a standalone cluster, Spark
    starts and TorchDistributor's barrier tasks run the processes on its executors. A
    driver not started by spark-submit starts Spark to learn its master, the launcher
    importing and loading meanwhile."""
    started = time.monotonic()
    launcher = None if on_standalone_cluster() else Launcher(entry, args)
    try:
        if launcher is not None and _local_master():
            result = launcher.go()
        else:
            result = _train_with_spark(app_name, entry, args, launcher)
        mark("driver-training-returned")
    finally:
        if launcher is not None:
            launcher.cancel()
    if result.model_path is not None:
        print(f"Model saved to {result.model_path}", flush=True)
    print(f"Training took {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return 0


def _local_master() -> bool:
    """Whether spark-submit gave this driver a master other than a standalone cluster,
    read from its JVM without starting a SparkContext; False when not under
    spark-submit (the master is then known once Spark starts)."""
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        return False
    from pyspark import SparkConf, SparkContext

    # Attaches to spark-submit's JVM (no SparkContext), whose conf SparkConf then reads.
    SparkContext._ensure_initialized()
    master = SparkConf().get("spark.master", "") or ""
    return bool(master) and not master.startswith("spark://")


def _train_with_spark(
    app_name: str, entry: Entry, args: tuple[Any, ...], launcher: Launcher | None
) -> Any:
    """Start Spark and train where :func:`~trustedml.ml._collectives.checked_placement`
    says: on this host through ``launcher``, else with TorchDistributor on the
    cluster's executors."""
    from pyspark.sql import SparkSession

    from trustedml.ml._collectives import checked_placement

    spark = SparkSession.builder.appName(app_name).getOrCreate()
    mark("driver-spark-started")
    try:
        placement = checked_placement(spark, "TorchDistributor")
        if placement == "local" and launcher is not None:
            return launcher.go()
        if launcher is not None:
            launcher.cancel()
        from trustedml.ml._lenet import run_distributed

        return run_distributed(entry.function(), *args)
    finally:
        spark.stop()


def run_workload(
    args: argparse.Namespace,
    locate: Callable[[argparse.Namespace], Path],
    evaluate: Callable[[argparse.Namespace, Path], int],
    train: Callable[[argparse.Namespace, Path], int],
) -> int:
    """Evaluate the ``--evaluate-only`` model, or else train, on the input ``locate``
    finds; the exit status of :func:`run_main`."""

    def body() -> int:
        found = locate(args)
        if args.evaluate_only is not None:
            return evaluate(args, found)
        return train(args, found)

    return run_main(body)


def run_main(body: Callable[[], int]) -> int:
    """Run a workload's body: usage errors exit 2, other trusted-ml errors 1, one line each."""
    # The training processes' lines reach stdout through this process: keep them
    # flowing to a pipe or log file as they come, not at exit.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        return body()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except TrustedMLError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
