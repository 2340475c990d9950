from __future__ import annotations

import json
from pathlib import Path

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from trustedml import (
    FileResult,
    KeyDirectory,
    LocalKeyStore,
    decrypt_path,
    encrypt_path,
)
from trustedml.cli._common import (
    ENV_KEYS,
    err_console,
    get_passphrase,
    handle_errors,
    passphrase_options,
)
from trustedml.hazmat import framing


class RichProgress:
    """Renders the library's progress reports as a rich bar on a terminal."""

    def __init__(self, bar: Progress) -> None:
        self._bar = bar
        self._task: object | None = None

    def start(self, description: str, total: int | None) -> None:
        self._task = self._bar.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, amount)  # type: ignore[arg-type]

    def finish(self) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)  # type: ignore[arg-type]
            self._task = None


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


def keys_option(func: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--keys",
        "keys_dir",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        envvar=ENV_KEYS,
        help=f"Key directory holding the key-encryption keys (env {ENV_KEYS}).",
    )(func)


def _store(keys_dir: Path, passphrase_file: Path | None, prompt: bool) -> LocalKeyStore:
    keys = KeyDirectory(keys_dir)
    return LocalKeyStore(keys, get_passphrase(passphrase_file, prompt))


def _report(results: list[FileResult], action: str, as_json: bool) -> None:
    if as_json:
        doc = [
            {
                "source": str(r.source),
                "target": str(r.target),
                "plaintext_bytes": r.plaintext_bytes,
                "ciphertext_bytes": r.ciphertext_bytes,
                "chunks": r.chunks,
                "key_id": r.key_id,
            }
            for r in results
        ]
        click.echo(json.dumps(doc, indent=2))
        return
    total = sum(r.plaintext_bytes for r in results)
    for r in results:
        err_console.print(f"{action} {r.source} -> {r.target} ({r.plaintext_bytes:,} bytes)")
    if len(results) > 1:
        err_console.print(f"{action} {len(results)} files, {total:,} bytes of plaintext")


@click.command("encrypt")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--key-id", required=True, help="Key-encryption key that wraps the data keys.")
@keys_option
@click.option(
    "--chunk-size",
    type=click.IntRange(framing.MIN_LOG2_CHUNK, framing.MAX_LOG2_CHUNK),
    default=framing.DEFAULT_LOG2_CHUNK,
    show_default=True,
    help="log2 of the chunk size (20 = 1 MiB).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report on stdout.")
@passphrase_options
@handle_errors
def encrypt_command(
    source: Path,
    target: Path,
    key_id: str,
    keys_dir: Path,
    chunk_size: int,
    as_json: bool,
    passphrase_file: Path | None,
    prompt: bool,
) -> None:
    """Encrypt SOURCE (a file, or every file under a directory) into TARGET."""
    store = _store(keys_dir, passphrase_file, prompt)
    with _bar() as bar:
        results = encrypt_path(
            source,
            target,
            key_id=key_id,
            keystore=store,
            log2_chunk=chunk_size,
            progress=RichProgress(bar),
        )
    _report(results, "encrypted", as_json)


@click.command("decrypt")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("target", type=click.Path(path_type=Path))
@keys_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report on stdout.")
@passphrase_options
@handle_errors
def decrypt_command(
    source: Path,
    target: Path,
    keys_dir: Path,
    as_json: bool,
    passphrase_file: Path | None,
    prompt: bool,
) -> None:
    """Decrypt SOURCE (a .tml file, or a directory of them) into TARGET.

    Every chunk is authenticated; on any failure nothing is written.
    """
    store = _store(keys_dir, passphrase_file, prompt)
    with _bar() as bar:
        results = decrypt_path(source, target, keystore=store, progress=RichProgress(bar))
    _report(results, "decrypted", as_json)
