"""`trustedml doctor`: what this machine can run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from trustedml._doctor import TSM_REPORT, Status, diagnose
from trustedml.cli._common import (
    ENV_KEYS,
    Command,
    CommandError,
    default_sim_key_path,
    env_path,
    out_console,
    stacked,
)
from trustedml.cluster import lint_cluster
from trustedml.errors import TrustedMLError
from trustedml.k8s import lint_manifests
from trustedml.runtime import ENV_BROKER_CA, ENV_BROKER_URL
from trustedml.spark import Finding, Severity, lint_conf_files
from trustedml.tee import ENV_SIM_KEY, ENV_TSM_ROOT

_STYLE = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red"}
_SEVERITY_STYLE = {Severity.HIGH: "bold red", Severity.MEDIUM: "yellow", Severity.LOW: "cyan"}


@click.command(
    "doctor",
    cls=Command,
    short_help="Check this machine, or lint a Spark conf, cluster or K8s render.",
)
@stacked(
    *(
        click.option(
            flag,
            dest,
            multiple=True,
            type=click.Path(path_type=Path),
            help=f"{text} instead; repeatable.",
        )
        for flag, dest, text in (
            ("--conf", "conf_files", "Lint this Spark properties file (spark-defaults.conf)"),
            ("--cluster", "cluster_dirs", "Lint the running cluster of this cluster directory"),
            ("--k8s", "k8s_dirs", "Lint this folder of Kubernetes manifests (a render's --out)"),
        )
    )
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
@click.option("--json", "as_json", is_flag=True, help="Print the checks or findings as JSON.")
def doctor_command(
    conf_files: tuple[Path, ...],
    cluster_dirs: tuple[Path, ...],
    k8s_dirs: tuple[Path, ...],
    keys_dir: Path | None,
    broker_url: str | None,
    broker_ca: Path | None,
    as_json: bool,
) -> None:
    """Check what this machine can run: Java and Spark, the optional extras, a key
    directory, the TEE backends (sim, gramine, cvm) and a key broker.

    Exits 1 when a check fails (a job of that kind cannot run here), else 0.

    With --conf, --cluster or --k8s, lint Spark properties files, running clusters
    or folders of Spark-on-Kubernetes manifests instead (docs/doctor.md): each finding
    has an id, a severity and the fix. Exits 1 when a finding is high, 2 when an input
    cannot be read, else 0.
    """
    if conf_files or cluster_dirs or k8s_dirs:
        _lint(conf_files, cluster_dirs, k8s_dirs, as_json)
        return
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


def _lint(
    conf_files: Sequence[Path],
    cluster_dirs: Sequence[Path],
    k8s_dirs: Sequence[Path],
    as_json: bool,
) -> None:
    try:
        findings = lint_conf_files(conf_files) if conf_files else []
        if cluster_dirs:
            findings += lint_cluster(cluster_dirs)
        for folder in k8s_dirs:
            found = lint_manifests(folder)
            if len(k8s_dirs) > 1:
                # The places are file names inside the folder: say which folder.
                found = [replace(f, where=f"{folder}: {f.where}") for f in found]
            findings += found
    except TrustedMLError as exc:
        # An input that cannot be read is the user's to fix, like a bad option.
        raise CommandError(str(exc), 2) from exc
    high = any(f.severity is Severity.HIGH for f in findings)
    if as_json:
        doc = [
            {
                "id": f.id,
                "severity": str(f.severity),
                "title": f.title,
                "where": f.where,
                "fix": f.fix,
            }
            for f in findings
        ]
        click.echo(json.dumps({"ok": not high, "findings": doc}, indent=2))
    else:
        _print_findings(findings)
    if high:
        raise SystemExit(1)


def _print_findings(findings: Sequence[Finding]) -> None:
    for f in findings:
        out_console.print(
            Text.assemble((f"{f.id} {f.severity:<6}", _SEVERITY_STYLE[f.severity]), f" {f.title}"),
            soft_wrap=True,
        )
        out_console.print(f"  at {f.where}", soft_wrap=True)
        out_console.print(f"  fix: {f.fix}", soft_wrap=True)
    counts = ", ".join(f"{sum(f.severity is s for f in findings)} {s}" for s in Severity)
    out_console.print(f"{len(findings)} finding(s): {counts}" if findings else "no findings")
