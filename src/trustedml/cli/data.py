"""`trustedml encrypt` and `decrypt`: files and folders to and from the encrypted format."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    KeyStore,
    LocalKeyStore,
    decrypt_path,
    encrypt_path,
)
from trustedml.cli._common import (
    ENV_KEYS,
    Command,
    err_console,
    get_passphrase,
    passphrase_options,
)
from trustedml.cli.broker import evidence_options, make_broker_client
from trustedml.hazmat import framing
from trustedml.runtime import ENV_BROKER_CA


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
        TextColumn("{task.description}", markup=False),  # a file name, not markup
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


def keys_option(func: click.decorators.FC) -> click.decorators.FC:
    func = evidence_options(func)
    func = click.option(
        "--ca",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        envvar=ENV_BROKER_CA,
        help=f"With --broker: CA certificate of the broker (env {ENV_BROKER_CA}; default: "
        "the CA of --keys if given, else the system's trust store).",
    )(func)
    func = click.option(
        "--broker",
        "broker_url",
        help="Get data keys from this key broker (https://HOST:PORT) after attesting with "
        "--evidence-provider, instead of from --keys.",
    )(func)
    return click.option(
        "--keys",
        "keys_dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=ENV_KEYS,
        help=f"Key directory holding the key-encryption keys (env {ENV_KEYS}).",
    )(func)


@contextlib.contextmanager
def _store(
    keys_dir: Path | None, passphrase_file: Path | None, prompt: bool, broker: dict[str, Any]
) -> Iterator[KeyStore]:
    """The command's key store; a broker client's connection closes on the way out."""
    url = broker.pop("broker_url")
    ca = broker.pop("ca")
    if url:
        if ca is None and keys_dir is not None:
            ca = KeyDirectory(keys_dir).ca_cert
        with make_broker_client(url, ca, **broker) as client:
            yield client
        return
    if keys_dir is None:
        raise click.UsageError(f"give --keys DIR (or {ENV_KEYS}), or --broker URL")
    keys = KeyDirectory(keys_dir)
    yield LocalKeyStore(keys, get_passphrase(passphrase_file, prompt))


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
        # One line per file whatever the width: a path broken across lines is two paths.
        err_console.print(
            f"{action} {r.source} -> {r.target} ({r.plaintext_bytes:,} bytes)", soft_wrap=True
        )
    if len(results) > 1:
        err_console.print(f"{action} {len(results)} files, {total:,} bytes of plaintext")


@click.command(
    "encrypt", cls=Command, short_help="Encrypt SOURCE (a file or a directory) into TARGET."
)
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
def encrypt_command(
    source: Path,
    target: Path,
    key_id: str,
    keys_dir: Path | None,
    chunk_size: int,
    as_json: bool,
    passphrase_file: Path | None,
    prompt: bool,
    **broker: Any,
) -> None:
    """Encrypt SOURCE (a file, or every file under a directory) into TARGET."""
    with _store(keys_dir, passphrase_file, prompt, broker) as store, _bar() as bar:
        results = encrypt_path(
            source,
            target,
            key_id=key_id,
            keystore=store,
            log2_chunk=chunk_size,
            progress=RichProgress(bar),
        )
    _report(results, "encrypted", as_json)


@click.command(
    "decrypt", cls=Command, short_help="Decrypt SOURCE (a .tml file or a directory) into TARGET."
)
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("target", type=click.Path(path_type=Path))
@keys_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report on stdout.")
@passphrase_options
def decrypt_command(
    source: Path,
    target: Path,
    keys_dir: Path | None,
    as_json: bool,
    passphrase_file: Path | None,
    prompt: bool,
    **broker: Any,
) -> None:
    """Decrypt SOURCE (a .tml file, or a directory of them) into TARGET.

    Every chunk is authenticated; on any failure nothing is written.
    """
    with _store(keys_dir, passphrase_file, prompt, broker) as store, _bar() as bar:
        results = decrypt_path(source, target, keystore=store, progress=RichProgress(bar))
    _report(results, "decrypted", as_json)
