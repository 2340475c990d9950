"""`trustedml attest show|verify|quote`."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from trustedml.attestation import (
    Appraisal,
    EvidenceType,
    Identity,
    Policy,
    SimKey,
    TcbStatus,
    describe_evidence,
    detect_evidence_type,
    get_provider,
    join_collateral,
    verify_evidence,
)
from trustedml.cli._common import (
    CommandError,
    Group,
    default_sim_key_path,
    err_console,
    exit_code_for,
    os_error_message,
    out_console,
    trusted_sim_keys_option,
)
from trustedml.errors import AttestationError, ConfigError, TrustedMLError
from trustedml.tee import ENV_SIM_KEY


def _parse_time(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    text = value.strip()
    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text), UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError) as exc:
        raise ConfigError(
            f"--at: expected an ISO 8601 time (2025-07-04T10:28:44Z) or Unix seconds, got {value!r}"
        ) from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _hex(value: str, what: str, max_len: int | None = None) -> bytes:
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise ConfigError(f"{what}: expected hexadecimal, got {value!r}") from None
    if max_len is not None and len(data) > max_len:
        raise ConfigError(f"{what}: expected at most {max_len} bytes, got {len(data)}")
    return data


def _platform_policy(kind: EvidenceType) -> Policy:
    # With no --policy, judge the platform only: genuine, not debug, not simulated,
    # TCB up to date. Which workload it is stays the caller's business.
    return Policy(allow=(Identity(evidence_type=kind),), min_tcb_status=TcbStatus.UP_TO_DATE)


def _print_fields(fields: Any, prefix: str = "") -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")

    def walk(value: Any, name: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{name}.{key}" if name else str(key))
        elif isinstance(value, list) and value and isinstance(value[0], dict | list):
            for index, item in enumerate(value):
                walk(item, f"{name}[{index}]")
        else:
            table.add_row(name, str(value))

    walk(fields, prefix)
    out_console.print(table)


@click.group("attest", cls=Group)
def attest_group() -> None:
    """Inspect, verify and produce TEE attestation evidence."""


@attest_group.command(
    "show", short_help="Print every field of a quote, SEV-SNP report or sim evidence."
)
@click.argument("evidence", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the fields as JSON.")
def show_command(evidence: Path, as_json: bool) -> None:
    """Print every field of an SGX/TDX quote, an SEV-SNP report or sim evidence."""
    described = describe_evidence(evidence.read_bytes())
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    out_console.print(
        f"[bold]{escape(str(evidence))}[/]: {described['evidence_type']}", markup=True
    )
    _print_fields(described["fields"])


@attest_group.command(
    "verify", short_help="Verify and appraise evidence; exit 0 only when accepted."
)
@click.argument("evidence", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--collateral",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Intel collateral JSON (SGX/TDX), or SEV-SNP certificates and AMD's CRL, PEM or "
    "DER (repeatable: e.g. the VCEK, cert_chain and crl as KDS serves them).",
)
@click.option("--at", "at", metavar="TIME", help="Verify as of this time (ISO 8601); default now.")
@click.option(
    "--policy",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Appraisal policy (TOML or JSON). Default: genuine, non-debug, UpToDate platform.",
)
@click.option(
    "--report-data",
    metavar="HEX",
    help="Require the evidence's report_data to equal this (zero-padded to 64 bytes).",
)
@trusted_sim_keys_option("--sim-key", "Trusted sim public key (PEM) for sim evidence; repeatable.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON verdict object on stdout, whatever the outcome.",
)
def verify_command(
    evidence: Path,
    collateral: tuple[Path, ...],
    at: str | None,
    policy: Path | None,
    report_data: str | None,
    sim_keys: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Verify evidence and appraise it; exit 0 only when it is accepted.

    \b
    Exit codes:
      0  accepted: the evidence verifies and the policy accepts it
      1  runtime error (e.g. a file cannot be read)
      2  usage or configuration error (bad option, invalid policy file)
      3  evidence invalid: malformed, forged, expired, revoked, wrong collateral
      4  evidence valid but refused by the policy (every reason is listed)

    With --json, stdout holds one object in every case: ok, verdict (accepted,
    refused, invalid, error), exit_code, reason, field, error (class name), and,
    when the evidence verified, reasons and the claims.
    """
    when: datetime | None = None
    try:
        when = _parse_time(at)
        data = evidence.read_bytes()
        kind = detect_evidence_type(data)
        rules = Policy.load(policy) if policy is not None else _platform_policy(kind)
        expected = _hex(report_data, "--report-data", 64) if report_data is not None else None
        verified = verify_evidence(
            data,
            collateral=join_collateral([p.read_bytes() for p in collateral]),
            at=when,
            sim_keys=[p.read_bytes() for p in sim_keys],
        )
        appraisal = rules.appraise(verified, at=when, expected_report_data=expected)
    except (TrustedMLError, OSError) as exc:
        code, verdict = _failure(exc)
        message = _message(exc)
        if as_json:
            body: dict[str, Any] = {
                "ok": False,
                "verdict": verdict,
                "exit_code": code,
                "reason": message,
                "field": _field(message) if isinstance(exc, TrustedMLError) else None,
                "error": type(exc).__name__,
            }
            if when is not None:
                body["verified_at"] = when.isoformat()
            click.echo(json.dumps(body, indent=2))
        raise CommandError(message, code) from exc
    _report(appraisal, when, as_json)
    sys.exit(EXIT_ACCEPTED if appraisal.accepted else EXIT_REFUSED)


# Exit codes of `attest verify` (0, 1 and 2 mean what they mean for every command).
EXIT_ACCEPTED = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_REFUSED = 4


def _failure(exc: BaseException) -> tuple[int, str]:
    # A bad policy file (PolicyError, an AttestationError) is the operator's mistake,
    # not bad evidence: a usage error, as for every command (exit_code_for).
    if isinstance(exc, TrustedMLError) and exit_code_for(exc) == EXIT_USAGE:
        return EXIT_USAGE, "error"
    if isinstance(exc, AttestationError):
        return EXIT_INVALID, "invalid"
    return EXIT_RUNTIME, "error"


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, TrustedMLError):
        return os_error_message(exc)
    return str(exc)


def _field(message: str) -> str | None:
    # Errors name what failed first ("pck_crl: expired at ..."): the part before the
    # first ": ", when there is one.
    head, sep, _ = message.partition(": ")
    return head if sep and head else None


def _report(appraisal: Appraisal, when: datetime, as_json: bool) -> None:
    verified = appraisal.verified
    if as_json:
        body: dict[str, Any] = {
            "ok": appraisal.accepted,
            "verdict": "accepted" if appraisal.accepted else "refused",
            "exit_code": EXIT_ACCEPTED if appraisal.accepted else EXIT_REFUSED,
            "reason": None if appraisal.accepted else "; ".join(appraisal.reasons),
            "field": None if appraisal.accepted else "policy",
            "error": None,
        }
        body.update(appraisal.to_dict())
        body["verified_at"] = when.isoformat()
        click.echo(json.dumps(body, indent=2))
        return
    verdict = "[bold green]ACCEPTED[/]" if appraisal.accepted else "[bold red]REFUSED[/]"
    out_console.print(f"verdict: {verdict}", markup=True)
    out_console.print(
        f"evidence: {verified.evidence_type.value}, verified as of {when.isoformat()}"
    )
    out_console.print(f"tcb status: {verified.tcb_status.value}")
    out_console.print(f"advisories: {', '.join(verified.advisory_ids) or 'none'}")
    if verified.claims.simulated:
        err_console.print(
            "[bold red]WARNING: simulated evidence, no hardware protection[/]", markup=True
        )
    for reason in appraisal.reasons:
        out_console.print(f"  - {reason}", markup=False)


@attest_group.command("quote")
@click.option("--report-data", required=True, metavar="HEX", help="Up to 64 bytes to bind.")
@click.option(
    "--provider",
    type=click.Choice(["gramine", "configfs-tsm", "sim"]),
    default="configfs-tsm",
    show_default=True,
    help="Where the evidence comes from.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    required=True,
    help="Write the evidence here ('-' for stdout).",
)
@click.option(
    "--sim-key",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=ENV_SIM_KEY,
    help=f"sim: signing key (created if missing; env {ENV_SIM_KEY}).",
)
@click.option("--measurement", metavar="HEX", help="sim: the measurement to claim.")
def quote_command(
    report_data: str,
    provider: str,
    out: Path,
    sim_key: Path | None,
    measurement: str | None,
) -> None:
    """Ask this machine's TEE for evidence binding REPORT_DATA."""
    binding = _hex(report_data, "--report-data", 64)
    kwargs: dict[str, Any] = {}
    if provider == "sim":
        if measurement is None:
            raise click.UsageError("--provider sim needs --measurement HEX")
        kwargs["key"] = SimKey.load_or_create(sim_key or default_sim_key_path())
        kwargs["measurement"] = _hex(measurement, "--measurement")
        err_console.print(
            "[bold red]WARNING: sim evidence is a development stand-in; it proves nothing "
            "about hardware[/]",
            markup=True,
        )
    evidence = get_provider(provider, **kwargs).get_evidence(binding)
    if str(out) == "-":
        sys.stdout.buffer.write(evidence)
        sys.stdout.buffer.flush()
    else:
        out.write_bytes(evidence)
        err_console.print(f"wrote {len(evidence)} bytes of {provider} evidence to {out}")


@attest_group.command(
    "sim-key", short_help="Create the sim signing key if needed; export its public key."
)
@click.option(
    "--sim-key",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=ENV_SIM_KEY,
    help=f"The signing key (created 0600 if missing; env {ENV_SIM_KEY}).",
)
@click.option(
    "--public-out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Write the public key (PEM) here, for `broker serve --trust-sim-key`.",
)
def sim_key_command(sim_key: Path | None, public_out: Path) -> None:
    """Create (if needed) this installation's sim signing key; export its public key."""
    key = SimKey.load_or_create(sim_key or default_sim_key_path())
    public_out.write_bytes(key.public_key_pem())
    err_console.print(
        f"sim public key {key.fingerprint[:16]}… written to {public_out} "
        "(sim evidence is for development: no hardware protection)"
    )
