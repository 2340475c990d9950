from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from trustedml import (
    KeyDirectory,
    LocalKeyStore,
    PlainSparkConfig,
    SecureSparkConfig,
    SparkSettings,
    get_backend,
    run,
    submit,
)
from trustedml.cli._common import (
    ENV_KEYS,
    err_console,
    get_passphrase,
    handle_errors,
    passphrase_options,
)
from trustedml.spark import mode_for_master

F = TypeVar("F", bound=Callable[..., Any])

INSECURE_BANNER = (
    "[bold yellow on red] INSECURE [/] [bold]--insecure: plain Spark. No authentication, "
    "no RPC encryption, no shuffle/spill encryption, no TLS. For baselines only.[/]"
)


def spark_options(func: F) -> F:
    options = [
        click.option(
            "--master", default="local[2]", show_default=True, help="local[N] or spark://HOST:PORT."
        ),
        click.option(
            "--keys",
            "keys_dir",
            type=click.Path(file_okay=False, path_type=Path),
            envvar=ENV_KEYS,
            help=f"Key directory from `trustedml keys init` (env {ENV_KEYS}).",
        ),
        click.option(
            "--conf",
            "confs",
            multiple=True,
            metavar="KEY=VALUE",
            help="Extra Spark property (repeatable); security settings and secrets refused.",
        ),
        click.option(
            "--insecure", is_flag=True, help="Plain Spark with no protection (baselines only)."
        ),
        click.option(
            "--tee",
            default="none",
            show_default=True,
            help="TEE backend to launch in.",
        ),
        click.option("--log-level", default="WARN", show_default=True, help="Spark log level."),
        click.option("--rpc-tls", is_flag=True, help="Use TLS for Spark RPC instead of AES-GCM."),
        click.option(
            "--kek",
            "keks",
            multiple=True,
            metavar="ID",
            help="Give the job this key-encryption key from --keys (repeatable); the job "
            "reads it with trustedml.runtime.job_keyring() and Spark's Parquet encryption uses it.",
        ),
        click.option("--no-ui", is_flag=True, help="Do not start the Spark web UI."),
        click.option(
            "--local-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="Scratch directory for shuffle and spill files (spark.local.dir).",
        ),
        passphrase_options,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _parse_confs(confs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in confs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"--conf: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def build_settings(
    *,
    master: str,
    keys_dir: Path | None,
    confs: tuple[str, ...],
    insecure: bool,
    log_level: str,
    rpc_tls: bool,
    no_ui: bool,
    local_dir: Path | None,
    keks: tuple[str, ...],
    passphrase_file: Path | None,
    prompt: bool,
) -> SparkSettings:
    common: dict[str, Any] = {
        "master": master,
        "python": sys.executable,
        "log_level": log_level,
        "ui": not no_ui,
        "local_dir": local_dir.resolve() if local_dir else None,
        "extra": _parse_confs(confs),
    }
    keys = KeyDirectory(keys_dir) if keys_dir is not None else None
    needs_keys = bool(keks) or not insecure
    if needs_keys and keys is None:
        what = "--kek" if insecure else "secure mode"
        raise click.UsageError(
            f"{what} needs a key directory: --keys DIR or {ENV_KEYS} "
            "(create one with `trustedml keys init DIR`), or --insecure for plain Spark"
        )
    passphrase = get_passphrase(passphrase_file, prompt) if needs_keys else None
    if keks:
        assert keys is not None
        assert passphrase is not None
        common["keyring"] = LocalKeyStore(keys, passphrase).keyring(keks)
    if insecure:
        if rpc_tls:
            raise click.UsageError("--rpc-tls and --insecure contradict each other")
        err_console.print(INSECURE_BANNER)
        return PlainSparkConfig(**common)
    assert keys is not None
    assert passphrase is not None
    opened = keys.unseal(passphrase)
    return SecureSparkConfig(
        **common,
        mode=mode_for_master(master),
        keystore=keys.keystore,
        truststore=keys.truststore,
        auth_secret=opened.spark_auth_secret,
        keystore_password=opened.keystore_password,
        truststore_password=opened.truststore_password,
        rpc_tls=rpc_tls,
    )


@click.command(
    "submit",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@spark_options
@click.option(
    "--py-files",
    "py_files",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Extra .py/.zip file shipped with the job (repeatable).",
)
@click.argument("app", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("app_args", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def submit_command(
    app: Path, app_args: tuple[str, ...], py_files: tuple[Path, ...], tee: str, **spark: Any
) -> None:
    """Run the PySpark application APP with every Spark protection on.

    Options after APP are passed to the application. The exit code is the app's.
    """
    backend = get_backend(tee)
    settings = build_settings(**spark)
    code = submit(app, app_args, settings=settings, py_files=py_files, tee=backend)
    sys.exit(code)


@click.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@spark_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@handle_errors
def run_command(command: tuple[str, ...], tee: str, **spark: Any) -> None:
    """Run a native COMMAND (e.g. `-- python script.py`) in the same environment.

    Spark sessions the command creates start with the secure configuration.
    """
    backend = get_backend(tee)
    settings = build_settings(**spark)
    sys.exit(run(command, settings=settings, tee=backend))
