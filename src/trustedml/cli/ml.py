"""`trustedml example` and `ml`: the BigDL PPML reference examples and ML workloads."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import click

from trustedml import submit
from trustedml.cli.jobs import job_command, launch

# NAME on the command line -> module of trustedml.ml.workloads
WORKLOADS = {
    "lenet": "lenet",
    "xgboost-regressor": "xgboost_regressor",
    "xgboost-classifier": "xgboost_classifier",
    "nyc-taxi-prep": "nyc_taxi_prep",
    "text-classification": "text_classification",
}


def workload_file(name: str) -> Path:
    if name not in WORKLOADS:
        raise click.UsageError(
            f"unknown example {name!r}: expected one of {', '.join(sorted(WORKLOADS))}"
        )
    spec = importlib.util.find_spec(f"trustedml.ml.workloads.{WORKLOADS[name]}")
    if spec is None or spec.origin is None:
        raise click.UsageError(f"example {name!r} is not installed")
    return Path(spec.origin)


@job_command("example", short_help="Run a BigDL PPML reference example NAME through submit.")
@click.argument("name", type=click.Choice(sorted(WORKLOADS)))
@click.argument("workload_args", nargs=-1, type=click.UNPROCESSED)
def example_command(name: str, workload_args: tuple[str, ...], **options: Any) -> None:
    """Run the BigDL PPML reference example NAME through `submit` (secure by default).

    Options after NAME go to the workload, e.g.
    `trustedml example --keys K --kek models lenet --data-path DIR --max-epoch 2`.
    """
    sys.exit(launch(options, submit, workload_file(name), workload_args))
