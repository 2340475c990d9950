"""What the TorchDistributor workloads share on the driver side: checks before Spark
starts, the training run itself, and mapping errors to exit codes."""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from trustedml.errors import ConfigError, TrustedMLError, reworded
from trustedml.ml._datasets import missing_default
from trustedml.ml._io import check_key


class _Result(Protocol):
    @property
    def model_path(self) -> str | None: ...


class _Config(Protocol):
    def check(self) -> None: ...


R = TypeVar("R", bound=_Result)


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
    train_fn: Callable[[Any], R],
    config: _Config,
    args: argparse.Namespace,
    *inputs: Path,
) -> int:
    """Check ``config``, the ``inputs`` and where the model goes on the driver, then
    train with :func:`train_on_spark`."""
    from trustedml.ml._lenet import check_inputs

    config.check()
    # Fail here, in one line, rather than in both training processes.
    check_inputs(*inputs)
    check_model_out(args.model_out, args.model_key_id)
    return train_on_spark(app_name, train_fn, config)


def train_on_spark(app_name: str, train_fn: Callable[..., R], *args: Any) -> int:
    """Start Spark, run ``train_fn`` in the TorchDistributor processes, report."""
    from pyspark.sql import SparkSession

    from trustedml.ml._lenet import run_distributed

    started = time.monotonic()
    spark = SparkSession.builder.appName(app_name).getOrCreate()
    try:
        result = run_distributed(train_fn, *args)
    finally:
        spark.stop()
    if result.model_path is not None:
        print(f"Model saved to {result.model_path}", flush=True)
    print(f"Training took {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return 0


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
