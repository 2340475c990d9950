"""`trustedml example` and `ml`: the BigDL PPML reference examples and ML workloads."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import click

from trustedml import submit
from trustedml.cli._common import handle_errors
from trustedml.cli.jobs import build_job, show_plan, spark_options, tee_options

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


@click.command(
    "example",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@spark_options
@tee_options
@click.argument("name", type=click.Choice(sorted(WORKLOADS)))
@click.argument("workload_args", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def example_command(name: str, workload_args: tuple[str, ...], **options: Any) -> None:
    """Run the seed's ML workload NAME through `submit` (secure mode by default).

    Options after NAME go to the workload, e.g.
    `trustedml example --keys K --kek models lenet --data-path DIR --max-epoch 2`.
    """
    expected, evidence_out = options["expect_measurement"], options["evidence_out"]
    settings, backend = build_job(**options)
    code = submit(
        workload_file(name),
        workload_args,
        settings=settings,
        tee=backend,
        expected_measurement=expected,
        on_plan=show_plan(evidence_out),
    )
    sys.exit(code)
