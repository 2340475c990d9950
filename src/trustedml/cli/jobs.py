"""`trustedml submit` and `run`: the Spark and TEE options every job command shares."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click
from rich.panel import Panel
from rich.text import Text

from trustedml import run, submit
from trustedml._fs import write_private
from trustedml.cli._common import (
    ENV_KEYS,
    Command,
    F,
    data_dir,
    err_console,
    get_passphrase,
    passphrase_options,
    stacked,
)
from trustedml.cli.k8s import k8s_options, refuse_k8s_only, submit_on_kubernetes
from trustedml.jobs import JobOptions, parse_conf, prepare_job
from trustedml.tee import (
    BACKEND_NAMES,
    DEFAULT_ENCLAVE_SIZE,
    DEFAULT_MAX_THREADS,
    ENV_SIM_KEY,
    LaunchPlan,
)

INSECURE_BANNER = (
    "[bold yellow on red] INSECURE [/] [bold]--insecure: plain Spark. No authentication, "
    "no RPC encryption, no shuffle/spill encryption, no TLS. For baselines only.[/]"
)


spark_options = stacked(
    click.option(
        "--master",
        default="local[2]",
        show_default=True,
        help="local[N], spark://HOST:PORT, or (submit) k8s://https://HOST:PORT.",
    ),
    click.option(
        "--driver-host",
        metavar="ADDR",
        help="spark:// master: the IP address the driver binds, which the workers must "
        "reach (default: the address this machine reaches the master from).",
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
)

tee_options = stacked(
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
    *(
        click.option(flag, type=int, help=f"--tee gramine: {text}")
        for flag, text in (
            ("--threads", f"maximum enclave threads (default {DEFAULT_MAX_THREADS})."),
            ("--isv-prod-id", "the enclave's ISV product id, 0..65535 (default 0)."),
            (
                "--isv-svn",
                "the enclave's security version, 0..65535 (default 0); raise it with each "
                "release so policies can set min_isv_svn.",
            ),
        )
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
)


def job_options(given: dict[str, Any]) -> JobOptions:
    """The :class:`JobOptions` the options of :func:`spark_options` and
    :func:`tee_options` ask for (a usage fault raises ConfigError: exit 2)."""
    sim_key = given["sim_key"]
    if given["tee"] != "sim" and os.environ.get(ENV_SIM_KEY):
        sim_key = None  # from the environment: a standing choice, not a mistake
    return JobOptions(
        master=given["master"],
        keys_dir=given["keys_dir"],
        conf=parse_conf(given["confs"]),
        allow_insecure=frozenset(given["allow_insecure"]),
        insecure=given["insecure"],
        log_level=given["log_level"],
        rpc_tls=given["rpc_tls"],
        ui=not given["no_ui"],
        local_dir=given["local_dir"],
        driver_host=given["driver_host"],
        keks=given["keks"],
        broker_url=given["broker_url"],
        broker_ca=given["broker_ca"],
        tee=given["tee"],
        sim_key=sim_key,
        enclave_size=given["enclave_size"],
        max_threads=given["threads"],
        isv_prod_id=given["isv_prod_id"],
        isv_svn=given["isv_svn"],
        manifest_dir=given["manifest_dir"],
        dry_run=given["dry_run"],
        evidence_out=given["evidence_out"],
    )


def print_notes(notes: Iterable[str]) -> None:
    """The library's notes and warnings about a job, one line each on stderr."""
    for note in notes:
        err_console.print(note, markup=False, highlight=False, soft_wrap=True)


def launch(given: dict[str, Any], start: Callable[..., int], *args: Any, **kwargs: Any) -> int:
    """Prepare the job the options ask for, then start it with ``start`` (submit or
    run): its exit status."""
    options = job_options(given)
    setup = prepare_job(
        options,
        lambda: get_passphrase(given["passphrase_file"], given["prompt"]),
        state_dir=data_dir(),
    )
    print_notes(setup.notes)
    if options.insecure:
        err_console.print(INSECURE_BANNER, markup=True)
    return start(
        *args,
        settings=setup.settings,
        tee=setup.tee,
        expected_measurement=given["expect_measurement"],
        on_plan=show_plan(given["evidence_out"]),
        **kwargs,
    )


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


def job_command(
    name: str, *, py_files: bool = False, k8s: bool = False, short_help: str | None = None
) -> Callable[[F], Command]:
    """A job command: everything after its target goes to the job, and it takes the
    Spark and TEE options (and --py-files for an application Spark ships)."""
    command = click.command(
        name,
        cls=Command,
        short_help=short_help,
        context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    )
    extra = ((PY_FILES,) if py_files else ()) + ((k8s_options,) if k8s else ())
    return lambda func: command(stacked(spark_options, tee_options, *extra)(func))


PY_FILES = click.option(
    "--py-files",
    "py_files",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Extra .py/.zip file shipped with the job (repeatable).",
)


@job_command("submit", py_files=True, k8s=True)
@click.argument("app", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("app_args", nargs=-1, type=click.UNPROCESSED)
def submit_command(
    app: Path, app_args: tuple[str, ...], py_files: tuple[Path, ...], **options: Any
) -> None:
    """Run the PySpark application APP with every Spark protection on.

    Options after APP are passed to the application. The exit code is the app's. With
    --master k8s://https://HOST:PORT the driver and executors run in TEE pods of that
    cluster (--tee gramine, cvm or sim; the Kubernetes options below; --dry-run only
    renders and prints the spark-submit command line).
    """
    if options["master"].startswith("k8s://"):
        _exit(submit_on_kubernetes(options, app, app_args, py_files), app.name)
    refuse_k8s_only(options)
    _exit(launch(options, submit, app, app_args, py_files=py_files), app.name)


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


@job_command("run", short_help="Run a native COMMAND, such as `-- python app.py`, as a job.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_command(command: tuple[str, ...], **options: Any) -> None:
    """Run a native COMMAND (e.g. `-- python script.py`) in the same environment.

    Spark sessions the command creates start with the secure configuration. With a
    --tee other than none, COMMAND must be `python SCRIPT.py [ARGS]`.
    """
    _exit(launch(options, run, command), command[0])
