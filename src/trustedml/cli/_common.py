"""Shared CLI plumbing: command classes mapping errors to exit codes, passphrases, paths."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from trustedml import ConfigError, KeyDirectoryError, PolicyError, Secret, TrustedMLError
from trustedml.jobs import ENV_KEYS as ENV_KEYS

F = TypeVar("F", bound=Callable[..., Any])

# Human messages go to stderr so that stdout stays the job's (or --json's). Text is text:
# what prints paths, ids or messages cannot be taken for rich markup ("[/x]" crashed it);
# the few styled lines ask for markup=True.
err_console = Console(stderr=True, highlight=False, markup=False)
out_console = Console(highlight=False, markup=False)

ENV_PASSPHRASE_FILE = "TRUSTEDML_PASSPHRASE_FILE"


class CommandError(click.ClickException):
    """A command failed: click prints it as one line on stderr and exits ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        # click reads exit_code from the exception; its class default is 1.
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: IO[Any] | None = None) -> None:
        # The message is text, not markup: a "[/path]" in it must print, not crash rich.
        err_console.print(
            f"[bold red]error:[/] {escape(self.message)}", markup=True, soft_wrap=True
        )


def exit_code_for(exc: TrustedMLError) -> int:
    """2 for what the user must change in the command or its inputs (a setting, a
    policy file, a key directory argument that is not one), 1 for what failed while
    running (a wrong passphrase included: the directory is right, the secret is not)."""
    if isinstance(exc, ConfigError | PolicyError | KeyDirectoryError):
        return 2
    return 1


def os_error_message(exc: OSError) -> str:
    """One line for an OS error: the file it names, then what went wrong."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


@contextlib.contextmanager
def _errors_as_exit_codes() -> Iterator[None]:
    try:
        yield
    except TrustedMLError as exc:
        raise CommandError(str(exc), exit_code_for(exc)) from exc
    except OSError as exc:
        raise CommandError(os_error_message(exc)) from exc


class Command(click.Command):
    """A command whose library errors end as one line and an exit code
    (:func:`exit_code_for`); click's own usage errors exit 2 on their own."""

    def invoke(self, ctx: click.Context) -> Any:
        with _errors_as_exit_codes():
            return super().invoke(ctx)


class Group(Command, click.Group):
    """A command group that maps the errors of every command under it as
    :class:`Command` does; its commands and subgroups are made of these classes."""

    command_class = Command
    group_class = type


def stacked(*decorators: Callable[[Any], Any]) -> Callable[[F], F]:
    """One decorator applying ``decorators`` as if written one above the other, so a
    group of options is declared once and its help lists them in this order."""

    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def trusted_sim_keys_option(flag: str, help_text: str) -> Callable[[F], F]:
    """``flag`` (repeatable): sim public keys (PEM) whose evidence verifies, as ``sim_keys``."""
    return click.option(
        flag,
        "sim_keys",
        multiple=True,
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help=help_text,
    )


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
