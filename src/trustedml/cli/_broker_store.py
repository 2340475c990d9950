"""`trustedml broker audit verify|export-head` and `trustedml broker migrate`: check and
adopt a broker's store offline, with the key directory's passphrase."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from trustedml import AuditLogError, ConfigError, KeyDirectory, Secret
from trustedml.broker import (
    MASTER_KEY_SECRET,
    migrate_store,
    parse_expected_head,
    verify_audit_log,
    verify_store,
)
from trustedml.cli._common import (
    ENV_KEYS,
    Command,
    err_console,
    get_passphrase,
    passphrase_options,
    stacked,
)

F = TypeVar("F", bound=Callable[..., Any])


def print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


def keys_dir_option(func: F) -> F:
    return click.option(
        "--keys",
        "keys_dir",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        envvar=ENV_KEYS,
        help=f"Key directory (env {ENV_KEYS}).",
    )(func)


def _master_secret(keys_dir: Path, passphrase_file: Path | None, prompt: bool) -> Secret:
    keys = KeyDirectory(keys_dir)
    opened = keys.unseal(get_passphrase(passphrase_file, prompt))
    if MASTER_KEY_SECRET not in opened:
        raise ConfigError(f"{keys.path}: has no broker master key (the broker never ran)")
    return opened[MASTER_KEY_SECRET]


def _db_option(func: F) -> F:
    return click.option(
        "--db",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="The broker's database file (its head file <db>.head beside it).",
    )(func)


def _store_command(name: str, short_help: str) -> Callable[[F], click.Command]:
    """An offline store command: the database, the key directory, --json and the
    passphrase; errors become one line and an exit code."""
    options = stacked(
        _db_option,
        keys_dir_option,
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
        passphrase_options,
    )
    command = click.command(name, cls=Command, short_help=short_help)
    return lambda func: command(options(func))


def _expected_head(value: str) -> tuple[int, str]:
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise click.UsageError(f"--expect-head: cannot read {value[1:]}: {exc}") from None
    try:
        return parse_expected_head(text)
    except AuditLogError as exc:
        raise click.UsageError(f"--expect-head: {exc}") from None


@_store_command("verify", "Check the audit log, its seal, head file and key rows.")
@click.option(
    "--expect-head",
    help="A head from `audit export-head` (SEQ:MAC, its JSON, or @FILE): the log must "
    "still contain it.",
)
def audit_verify(
    db: Path,
    keys_dir: Path,
    expect_head: str | None,
    as_json: bool,
    passphrase_file: Path | None,
    prompt: bool,
) -> None:
    """Check the audit log's MAC chain, its seal and head file (wiped, truncated, an
    older copy of the database restored) and every key row's MAC; report every
    problem (exit 1). Safe while the broker runs."""
    expected = _expected_head(expect_head) if expect_head else None
    result = verify_store(
        db, _master_secret(keys_dir, passphrase_file, prompt), expect_head=expected
    )
    if as_json:
        print_json(result.to_dict())
    for note in result.notes:
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    if not result.ok:
        problems = result.messages()
        if not as_json:
            for problem in problems:
                err_console.print(f"FAILED: {problem}", highlight=False, soft_wrap=True)
        raise AuditLogError(
            f"{db}: {len(problems)} integrity problem{'s' * (len(problems) > 1)}: {problems[0]}"
        )
    if not as_json:
        seq = result.head.seq if result.head else 0
        err_console.print(
            f"audit log ok: {result.entries} entries, head seq={seq}; "
            f"{len(result.index)} key rows verify"
        )


@_store_command("export-head", "Print the verified audit head (SEQ:MAC) to keep elsewhere.")
def audit_export_head(
    db: Path, keys_dir: Path, as_json: bool, passphrase_file: Path | None, prompt: bool
) -> None:
    """Print the verified audit head (SEQ:MAC) to keep somewhere the broker host cannot
    write; later, `audit verify --expect-head` shows the log still contains it."""
    master = _master_secret(keys_dir, passphrase_file, prompt)
    result = verify_audit_log(db, master)
    if result.head is None:
        raise AuditLogError(f"{db}: the audit log is empty: no head to export")
    head = {"seq": result.head.seq, "mac": result.head.mac}
    click.echo(json.dumps(head) if as_json else f"{head['seq']}:{head['mac']}")


@_store_command("migrate", "Adopt an older broker database, or rewrite a lost head file.")
def migrate_command(
    db: Path, keys_dir: Path, as_json: bool, passphrase_file: Path | None, prompt: bool
) -> None:
    """Once, with the broker stopped: give a schema 1 database row MACs, a key index and
    a seal (its audit log must verify; its key rows are adopted as they are, so check
    `broker key list` first), or write a lost head file for a database that otherwise
    verifies."""
    report = migrate_store(db, _master_secret(keys_dir, passphrase_file, prompt))
    if as_json:
        print_json(report)
    elif report.get("migrated"):
        err_console.print(
            f"migrated {db} to schema 2: {len(report['keys'])} key rows MAC'd, audit entry "
            f"seq={report['audit_seq']} records their policies"
        )
    elif "head_file" in report:
        err_console.print(f"wrote {report['head_file']} (seal seq={report['audit_seq']})")
    else:
        err_console.print(f"{db}: {report['note']}; nothing to do")
