"""`trustedml submit` and `run`: the Spark and TEE options every job command shares."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.panel import Panel
from rich.text import Text

from trustedml import (
    KeyDirectory,
    LocalKeyStore,
    PlainSparkConfig,
    Secret,
    SecureSparkConfig,
    SparkSettings,
    TeeBackend,
    get_backend,
    run,
    submit,
)
from trustedml._fs import write_private
from trustedml.cli._common import (
    ENV_KEYS,
    data_dir,
    default_sim_key_path,
    err_console,
    get_passphrase,
    handle_errors,
    passphrase_options,
)
from trustedml.errors import KeyNotFoundError
from trustedml.keys import SecretName
from trustedml.spark import check_secure_conf, conf_refusal, mode_for_master
from trustedml.tee import (
    BACKEND_NAMES,
    DEFAULT_ENCLAVE_SIZE,
    DEFAULT_MAX_THREADS,
    ENV_SIM_KEY,
    LaunchPlan,
)

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
            help="Extra Spark property (repeatable). Secure jobs accept only keys that cannot "
            "weaken them (docs/spark-security.md); secrets are always refused.",
        ),
        click.option(
            "--allow-insecure-conf",
            "allow_insecure",
            multiple=True,
            metavar="KEY",
            help="Experts: let the --conf KEY through although it can weaken the job "
            "(repeatable); warned about, and recorded in the job measurement.",
        ),
        click.option(
            "--insecure", is_flag=True, help="Plain Spark with no protection (baselines only)."
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
        click.option(
            "--broker",
            "broker_url",
            metavar="URL",
            help="Key broker (https://HOST:PORT) the job attests to for its data keys: "
            "trustedml.runtime.job_keystore() in the job. Needs --tee sim|gramine|cvm.",
        ),
        click.option(
            "--broker-ca",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            help="CA certificate the job verifies the broker with (default: the CA of --keys).",
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


def tee_options(func: F) -> F:
    options = [
        click.option(
            "--tee",
            type=click.Choice(BACKEND_NAMES),
            default="none",
            show_default=True,
            help="Where the job runs: none (the host), sim (simulated TEE, NO protection), "
            "gramine (SGX enclave), cvm (inside a TDX/SEV-SNP confidential VM).",
        ),
        click.option(
            "--sim-key",
            type=click.Path(dir_okay=False, path_type=Path),
            envvar=ENV_SIM_KEY,
            help=f"--tee sim: key that signs sim evidence, created if missing (env {ENV_SIM_KEY}; "
            "default ~/.local/share/trustedml/sim-key.pem).",
        ),
        click.option(
            "--enclave-size",
            metavar="SIZE",
            help=f"--tee gramine: enclave size, e.g. 4G (default {DEFAULT_ENCLAVE_SIZE}).",
        ),
        click.option(
            "--threads",
            type=int,
            help=f"--tee gramine: maximum enclave threads (default {DEFAULT_MAX_THREADS}).",
        ),
        click.option(
            "--isv-prod-id",
            type=int,
            help="--tee gramine: the enclave's ISV product id, 0..65535 (default 0).",
        ),
        click.option(
            "--isv-svn",
            type=int,
            help="--tee gramine: the enclave's security version, 0..65535 (default 0); raise it "
            "with each release so policies can set min_isv_svn.",
        ),
        click.option(
            "--manifest-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="--tee gramine: where manifests are written "
            "(default ~/.local/share/trustedml/gramine).",
        ),
        click.option(
            "--dry-run",
            is_flag=True,
            help="--tee gramine: write the manifest, do not sign or launch.",
        ),
        click.option(
            "--expect-measurement",
            metavar="HEX",
            help="Refuse to start unless the job measurement is HEX (see `trustedml measure`).",
        ),
        click.option(
            "--evidence-out",
            type=click.Path(dir_okay=False, path_type=Path),
            help="--tee sim/cvm: write the launch evidence (report_data = job measurement) here.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _check_tee_flags(tee: str, **given: Any) -> None:
    only = {
        "sim_key": ("sim",),
        "enclave_size": ("gramine",),
        "threads": ("gramine",),
        "isv_prod_id": ("gramine",),
        "isv_svn": ("gramine",),
        "manifest_dir": ("gramine",),
        "dry_run": ("gramine",),
        "evidence_out": ("sim", "cvm"),
    }
    for name, backends in only.items():
        value = given.get(name)
        if value not in (None, False) and tee not in backends:
            if name == "sim_key" and os.environ.get(ENV_SIM_KEY):
                continue  # from the environment: a standing choice, not a mistake
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(
                f"{flag} applies to --tee {' or '.join(backends)}, not --tee {tee}"
            )


def _parse_confs(confs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in confs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"--conf: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def warn_insecure(settings: SparkSettings) -> None:
    """Say on stderr which --conf keys were let through with --allow-insecure-conf."""
    for key, value in settings.insecure_conf().items():
        why = conf_refusal(key)
        category = f"{why.category}: {why.reason}" if why else "allowed"
        err_console.print(
            f"warning: --allow-insecure-conf: {key}={value} can weaken this job "
            f"({category}); it is recorded in the job measurement",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def build_settings(**spark: Any) -> SparkSettings:
    """The Spark configuration the options of :func:`spark_options` ask for."""
    return _build_settings(**spark, want_enclave_key=False)[0]


def _build_settings(
    *,
    want_enclave_key: bool,
    master: str,
    keys_dir: Path | None,
    confs: tuple[str, ...],
    allow_insecure: tuple[str, ...],
    insecure: bool,
    log_level: str,
    rpc_tls: bool,
    no_ui: bool,
    local_dir: Path | None,
    keks: tuple[str, ...],
    broker_url: str | None,
    broker_ca: Path | None,
    passphrase_file: Path | None,
    prompt: bool,
) -> tuple[SparkSettings, Secret | None]:
    common: dict[str, Any] = {
        "master": master,
        "python": sys.executable,
        "log_level": log_level,
        "ui": not no_ui,
        "local_dir": local_dir.resolve() if local_dir else None,
        "extra": _parse_confs(confs),
    }
    if insecure and allow_insecure:
        raise click.UsageError(
            "--allow-insecure-conf is for secure jobs: --insecure lets every --conf through"
        )
    if not insecure:
        # Before any passphrase or key directory: a refused --conf fails fast.
        check_secure_conf(common["extra"], allow_insecure)
    keys = KeyDirectory(keys_dir) if keys_dir is not None else None
    if broker_url is not None:
        if broker_ca is None and keys is not None:
            broker_ca = keys.ca_cert
        common["broker_url"] = broker_url
        common["broker_ca"] = broker_ca.resolve() if broker_ca is not None else None
    if want_enclave_key and keys is None:
        raise click.UsageError(
            "--tee gramine signs the enclave with the key directory's enclave key: "
            f"--keys DIR or {ENV_KEYS} (or --dry-run to only write the manifest)"
        )
    needs_keys = bool(keks) or not insecure or want_enclave_key
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
        try:
            common["keyring"] = LocalKeyStore(keys, passphrase).keyring(keks)
        except KeyNotFoundError as exc:
            # An id on the command line that --keys does not hold: the command is wrong.
            raise click.UsageError(f"--kek: {exc}") from exc
    opened = None
    if not insecure or want_enclave_key:
        assert keys is not None
        assert passphrase is not None
        opened = keys.unseal(passphrase)
    enclave_key = opened[SecretName.ENCLAVE_SIGNING_KEY] if want_enclave_key and opened else None
    if insecure:
        if rpc_tls:
            raise click.UsageError("--rpc-tls and --insecure contradict each other")
        err_console.print(INSECURE_BANNER)
        return PlainSparkConfig(**common), enclave_key
    assert keys is not None
    assert opened is not None
    settings = SecureSparkConfig(
        **common,
        mode=mode_for_master(master),
        keystore=keys.keystore,
        truststore=keys.truststore,
        auth_secret=opened.spark_auth_secret,
        keystore_password=opened.keystore_password,
        truststore_password=opened.truststore_password,
        rpc_tls=rpc_tls,
        allow_insecure=frozenset(allow_insecure),
    )
    warn_insecure(settings)
    return settings, enclave_key


def no_ui_for(tee: str, no_ui: bool) -> bool:
    """Whether the job runs without the web UI: as asked, and always under Gramine,
    where with TLS it needs a host secret the enclave never receives and without TLS
    it would serve the job's data in the clear to the host."""
    return no_ui or tee == "gramine"


def build_job(
    *,
    tee: str,
    sim_key: Path | None,
    enclave_size: str | None,
    threads: int | None,
    manifest_dir: Path | None,
    dry_run: bool,
    isv_prod_id: int | None = None,
    isv_svn: int | None = None,
    **spark: Any,
) -> tuple[SparkSettings, TeeBackend]:
    """The Spark configuration and the TEE backend the options ask for."""
    spark.pop("expect_measurement", None)
    evidence_out = spark.pop("evidence_out", None)
    _check_tee_flags(
        tee,
        sim_key=sim_key,
        enclave_size=enclave_size,
        threads=threads,
        manifest_dir=manifest_dir,
        dry_run=dry_run,
        evidence_out=evidence_out,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
    )
    if spark.get("broker_url") is not None and tee == "none":
        raise click.UsageError(
            "--broker needs attestation evidence: choose --tee sim for development, or gramine/cvm"
        )
    asked = bool(spark.get("no_ui"))
    if no_ui_for(tee, asked) != asked:
        err_console.print(
            "--tee gramine: the Spark web UI is off (its TLS password stays outside the enclave)"
        )
        spark["no_ui"] = True
    settings, enclave_key = _build_settings(
        **spark, want_enclave_key=tee == "gramine" and not dry_run
    )
    options: dict[str, Any] = {}
    if tee == "sim":
        options["key_path"] = sim_key or default_sim_key_path()
    elif tee == "gramine":
        options["manifest_dir"] = manifest_dir or data_dir() / "gramine"
        options["signing_key"] = enclave_key
        options["enclave_size"] = enclave_size or DEFAULT_ENCLAVE_SIZE
        options["max_threads"] = DEFAULT_MAX_THREADS if threads is None else threads
        options["dry_run"] = dry_run
        options["isv_prod_id"] = isv_prod_id or 0
        options["isv_svn"] = isv_svn or 0
    return settings, get_backend(tee, **options)


def show_plan(evidence_out: Path | None) -> Callable[[LaunchPlan], None]:
    """Render a backend's launch plan on stderr (the sim banner loudly, always)."""

    def show(plan: LaunchPlan) -> None:
        if plan.banner:
            err_console.print(
                Panel(
                    Text(plan.banner, style="bold"),
                    title="WARNING: NO HARDWARE PROTECTION",
                    border_style="bold red",
                    expand=False,
                )
            )
        for note in plan.notes:
            err_console.print(note, markup=False, highlight=False, soft_wrap=True)
        if evidence_out is not None:
            if plan.evidence is None:
                raise click.UsageError("--evidence-out: this backend produced no launch evidence")
            write_private(evidence_out, plan.evidence)
            err_console.print(f"launch evidence written to {evidence_out}", markup=False)
        if not plan.launch and "manifest" in plan.files:
            err_console.print(
                f"--dry-run: manifest written to {plan.files['manifest']}; not launched",
                markup=False,
                soft_wrap=True,
            )

    return show


@click.command(
    "submit",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@spark_options
@tee_options
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
    app: Path, app_args: tuple[str, ...], py_files: tuple[Path, ...], **options: Any
) -> None:
    """Run the PySpark application APP with every Spark protection on.

    Options after APP are passed to the application. The exit code is the app's.
    """
    expected, evidence_out = options["expect_measurement"], options["evidence_out"]
    settings, backend = build_job(**options)
    code = submit(
        app,
        app_args,
        settings=settings,
        py_files=py_files,
        tee=backend,
        expected_measurement=expected,
        on_plan=show_plan(evidence_out),
    )
    _exit(code, app.name)


def _exit(code: int, what: str) -> None:
    """Exit with the job's status; a failure ends with one line saying so, since
    Spark's own account of it can be pages of JVM and Python tracebacks."""
    if code > 128:
        err_console.print(f"error: {what} was killed by signal {code - 128} (exit {code})")
    elif code:
        err_console.print(
            f"error: {what} failed with exit status {code}; its output above says why"
        )
    sys.exit(code)


@click.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@spark_options
@tee_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@handle_errors
def run_command(command: tuple[str, ...], **options: Any) -> None:
    """Run a native COMMAND (e.g. `-- python script.py`) in the same environment.

    Spark sessions the command creates start with the secure configuration. With a
    --tee other than none, COMMAND must be `python SCRIPT.py [ARGS]`.
    """
    expected, evidence_out = options["expect_measurement"], options["evidence_out"]
    settings, backend = build_job(**options)
    code = run(
        command,
        settings=settings,
        tee=backend,
        expected_measurement=expected,
        on_plan=show_plan(evidence_out),
    )
    _exit(code, command[0])
