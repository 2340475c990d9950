"""Shared CLI plumbing: error-to-exit-code mapping, passphrases, consoles and paths."""

from __future__ import annotations

import functools
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from trustedml import ConfigError, KeyDirectoryError, Secret, TrustedMLError, UnsealError

F = TypeVar("F", bound=Callable[..., Any])

# Human messages go to stderr so that stdout stays the job's (or --json's).
err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)

ENV_PASSPHRASE_FILE = "TRUSTEDML_PASSPHRASE_FILE"
ENV_KEYS = "TRUSTEDML_KEYS"


def fail(message: str, code: int = 1) -> None:
    """Print one line naming what failed and exit."""
    err_console.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    sys.exit(code)


def exit_code_for(exc: TrustedMLError) -> int:
    """2 for what the user must change in the command or its inputs (a setting, a
    key directory argument that is not one), 1 for what failed while running (a
    wrong passphrase included: the directory is right, the secret is not)."""
    if isinstance(exc, ConfigError):
        return 2
    if isinstance(exc, KeyDirectoryError) and not isinstance(exc, UnsealError):
        return 2
    return 1


def handle_errors(func: F) -> F:
    """Map library errors to exit codes (:func:`exit_code_for`); click's own usage
    errors exit 2 on their own."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TrustedMLError as exc:
            fail(str(exc), exit_code_for(exc))
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or exc}", 1)

    return wrapper  # type: ignore[return-value]


def passphrase_options(func: F) -> F:
    func = click.option(
        "--prompt",
        "prompt",
        is_flag=True,
        help="Ask for the passphrase on the terminal.",
    )(func)
    func = click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
        envvar=ENV_PASSPHRASE_FILE,
        help=f"File holding the passphrase ('-' for stdin; env {ENV_PASSPHRASE_FILE}).",
    )(func)
    return func


def read_passphrase_file(path: Path) -> Secret:
    if str(path) == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if stat.S_ISREG(path.stat().st_mode) and mode & 0o077:
                raise click.UsageError(
                    f"permissions too open on passphrase file {path}: "
                    f"expected 0600 (or stricter), got {mode:04o}"
                )
            data = path.read_bytes()
        except OSError as exc:
            raise click.UsageError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
    # One trailing newline is an artefact of `echo` or an editor, not the passphrase.
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise click.UsageError(f"passphrase file {path} is empty")
    return Secret(data)


def get_passphrase(
    path: Path | None, prompt: bool, *, confirm: bool = False, what: str = "passphrase"
) -> Secret:
    if path is not None and prompt:
        raise click.UsageError("give either --passphrase-file or --prompt, not both")
    if path is not None:
        return read_passphrase_file(path)
    if prompt:
        value = click.prompt(
            f"Key directory {what}", hide_input=True, confirmation_prompt=confirm, err=True
        )
        return Secret(str(value))
    raise click.UsageError(
        f"a {what} is needed: use --passphrase-file FILE, set {ENV_PASSPHRASE_FILE}, "
        "or use --prompt"
    )


def data_dir() -> Path:
    """Per-user state of trusted-ml (sim key, Gramine manifests): XDG_DATA_HOME."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "trustedml"


def default_sim_key_path() -> Path:
    """Where this installation's sim signing key lives unless told otherwise."""
    return data_dir() / "sim-key.pem"


def env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None
