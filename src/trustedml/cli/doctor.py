"""`trustedml doctor`: what this machine can run."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from trustedml._doctor import TSM_REPORT, Status, diagnose
from trustedml.cli._common import (
    ENV_KEYS,
    Command,
    default_sim_key_path,
    env_path,
    out_console,
)
from trustedml.runtime import ENV_BROKER_CA, ENV_BROKER_URL
from trustedml.tee import ENV_SIM_KEY, ENV_TSM_ROOT

_STYLE = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red"}


@click.command(
    "doctor",
    cls=Command,
    short_help="Check what this machine can run (Java, Spark, TEEs, broker).",
)
@click.option(
    "--keys",
    "keys_dir",
    envvar=ENV_KEYS,
    type=click.Path(path_type=Path),
    help=f"Also check this key directory (env {ENV_KEYS}); nothing is unsealed.",
)
@click.option(
    "--broker",
    "broker_url",
    envvar=ENV_BROKER_URL,
    help=f"Also check that this key broker answers over TLS (env {ENV_BROKER_URL}).",
)
@click.option(
    "--ca",
    "broker_ca",
    envvar=ENV_BROKER_CA,
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"CA certificate of --broker (env {ENV_BROKER_CA}; default: the CA of --keys).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor_command(
    keys_dir: Path | None, broker_url: str | None, broker_ca: Path | None, as_json: bool
) -> None:
    """Check what this machine can run: Java and Spark, the optional extras, a key
    directory, the TEE backends (sim, gramine, cvm) and a key broker.

    Exits 1 when a check fails (a job of that kind cannot run here), else 0.
    """
    tsm = env_path(ENV_TSM_ROOT)
    sim_key = env_path(ENV_SIM_KEY) or default_sim_key_path()
    checks = diagnose(
        keys=keys_dir,
        broker_url=broker_url,
        broker_ca=broker_ca,
        sim_key=sim_key,
        tsm_root=tsm or TSM_REPORT,
    )
    failed = any(c.status is Status.FAIL for c in checks)
    if as_json:
        doc = [
            {"area": c.area, "name": c.name, "status": str(c.status), "detail": c.detail}
            for c in checks
        ]
        click.echo(json.dumps({"ok": not failed, "checks": doc}, indent=2))
    else:
        table = Table(title="trustedml doctor")
        for column in ("area", "check", "status", "detail"):
            table.add_column(column)
        for c in checks:
            table.add_row(c.area, c.name, Text(str(c.status), style=_STYLE[c.status]), c.detail)
        out_console.print(table)
    if failed:
        raise SystemExit(1)
