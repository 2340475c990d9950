"""`trustedml keys`: create, show, check and extend a key directory."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from trustedml import KeyDirectory, LocalKeyStore, init_key_directory
from trustedml.cli._common import (
    Group,
    err_console,
    get_passphrase,
    out_console,
    passphrase_options,
)


@click.group("keys", cls=Group)
def keys_group() -> None:
    """Create and inspect key directories."""


@keys_group.command("init", short_help="Create key directory DIRECTORY (TLS, Spark, enclave keys).")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", "hosts", multiple=True, help="Extra TLS host name or IP (repeatable).")
@click.option("--days", default=365, show_default=True, help="Certificate validity in days.")
@click.option("--force", is_flag=True, help="Replace an existing key directory.")
@passphrase_options
def keys_init(
    directory: Path,
    hosts: tuple[str, ...],
    days: int,
    force: bool,
    passphrase_file: Path | None,
    prompt: bool,
) -> None:
    """Create DIRECTORY with TLS material, Spark secrets and an enclave signing key.

    Every secret is sealed with a key derived from the passphrase (scrypt).
    """
    passphrase = get_passphrase(passphrase_file, prompt, confirm=True)
    with err_console.status("generating keys and sealing secrets..."):
        keys = init_key_directory(directory, passphrase, hosts=hosts, force=force, days=days)
    err_console.print(f"created key directory {keys.path}")
    _print_manifest(keys, as_json=False)


@keys_group.command("show", short_help="Print DIRECTORY's manifest and fingerprints (no secret).")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--check",
    is_flag=True,
    help="Also unseal the vault with the passphrase and cross-check every file.",
)
@passphrase_options
def keys_show(
    directory: Path, as_json: bool, check: bool, passphrase_file: Path | None, prompt: bool
) -> None:
    """Print the manifest and fingerprints of DIRECTORY (never a secret)."""
    keys = KeyDirectory(directory)
    checks: list[str] = []
    if check:
        checks = keys.verify(get_passphrase(passphrase_file, prompt))
    _print_manifest(keys, as_json=as_json, checks=checks)


@keys_group.command("passwd")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--new-passphrase-file",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="File holding the new passphrase.",
)
@passphrase_options
def keys_passwd(
    directory: Path,
    new_passphrase_file: Path | None,
    passphrase_file: Path | None,
    prompt: bool,
) -> None:
    """Re-seal DIRECTORY's secrets under a new passphrase."""
    keys = KeyDirectory(directory)
    old = get_passphrase(passphrase_file, prompt)
    new = get_passphrase(new_passphrase_file, prompt, confirm=True, what="new passphrase")
    keys.change_passphrase(old, new)
    err_console.print(f"passphrase changed for {keys.path}")


@keys_group.command("new-kek")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("key_id")
@passphrase_options
def keys_new_kek(directory: Path, key_id: str, passphrase_file: Path | None, prompt: bool) -> None:
    """Create the key-encryption key KEY_ID, sealed in DIRECTORY."""
    store = LocalKeyStore(KeyDirectory(directory), get_passphrase(passphrase_file, prompt))
    store.create_kek(key_id)
    err_console.print(f"created key-encryption key {key_id!r} in {directory}")


@keys_group.command("list-keks")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@passphrase_options
def keys_list_keks(directory: Path, passphrase_file: Path | None, prompt: bool) -> None:
    """List the key-encryption keys sealed in DIRECTORY (ids only)."""
    store = LocalKeyStore(KeyDirectory(directory), get_passphrase(passphrase_file, prompt))
    for key_id in store.key_ids():
        click.echo(key_id)


def _print_manifest(keys: KeyDirectory, *, as_json: bool, checks: list[str] | None = None) -> None:
    manifest = keys.manifest.as_dict()
    fingerprints = keys.fingerprints()
    if as_json:
        doc = {
            "path": str(keys.path.resolve()),
            "manifest": manifest,
            "fingerprints": fingerprints,
            "checks": checks or [],
        }
        click.echo(json.dumps(doc, indent=2, default=list))
        return
    table = Table(title=f"key directory {keys.path}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in manifest.items():
        if isinstance(value, tuple):
            value = ", ".join(value)
        table.add_row(name, str(value))
    for name, value in fingerprints.items():
        table.add_row(f"fingerprint {name}", value)
    for check in checks or []:
        table.add_row("check", Text.assemble(("ok", "green"), f" {check}"))
    out_console.print(table)
