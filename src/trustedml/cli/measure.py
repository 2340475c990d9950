"""`trustedml measure`: the job measurement a submit command line would have."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from trustedml.cli.jobs import job_command, print_notes
from trustedml.jobs import insecure_conf_warnings, parse_conf, web_ui
from trustedml.spark import measurement_settings
from trustedml.tee import measure_job


@job_command("measure", py_files=True)
@click.option(
    "--launcher",
    type=click.Choice(["submit", "run"]),
    default="submit",
    show_default=True,
    help="Measure for `trustedml submit APP`, or for `trustedml run -- python APP`.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the digest and all measured parts.")
@click.argument("app", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("app_args", nargs=-1, type=click.UNPROCESSED)
def measure_command(
    app: Path,
    app_args: tuple[str, ...],
    py_files: tuple[Path, ...],
    launcher: str,
    as_json: bool,
    master: str,
    confs: tuple[str, ...],
    allow_insecure: tuple[str, ...],
    insecure: bool,
    log_level: str,
    rpc_tls: bool,
    no_ui: bool,
    keks: tuple[str, ...],
    tee: str,
    **_ignored: Any,
) -> None:
    """Print the job measurement (SHA-384, hex) of APP with ARGS.

    Takes the options of `trustedml submit`, so a submit command line can be measured
    by changing only its first word; options that do not enter the measurement (key
    directory, passphrase, --local-dir, TEE choices) are accepted and ignored, and no
    passphrase is needed. As for submit, everything after APP goes to the app: give
    --json before APP.
    """
    settings = measurement_settings(
        secure=not insecure,
        master=master,
        rpc_tls=rpc_tls,
        log_level=log_level,
        ui=web_ui(tee, asked=not no_ui),
        extra=parse_conf(confs),
        with_keys=bool(keks),
        allow_insecure=allow_insecure,
    )
    print_notes(insecure_conf_warnings(settings))
    measurement = measure_job(app, app_args, py_files, settings, launcher=launcher)
    if as_json:
        click.echo(json.dumps(measurement.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(measurement.hex)
