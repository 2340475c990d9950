"""`trustedml k8s` and `submit --master k8s://`: render, apply and submit Spark on Kubernetes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from trustedml import ConfigError, KeyDirectory
from trustedml.cli._common import (
    ENV_KEYS,
    Group,
    default_sim_key_path,
    err_console,
    get_passphrase,
    out_console,
    passphrase_options,
    stacked,
)
from trustedml.jobs import parse_conf
from trustedml.k8s import (
    K8S_TEES,
    KubernetesOptions,
    RenderedApp,
    apply,
    delete,
    parse_toleration,
    render,
    secret_bundle,
    spark_pod_specs,
    submit_kubernetes,
)
from trustedml.tee import ENV_SIM_KEY

ENV_KUBECONFIG = "KUBECONFIG"

_kubeconfig = click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar=ENV_KUBECONFIG,
    help=f"kubeconfig of the cluster (env {ENV_KUBECONFIG}; default ~/.kube/config).",
)
_context = click.option("--context", metavar="NAME", help="kubeconfig context to use.")

# The options only a Kubernetes job has (`k8s render` and `submit --master k8s://`).
k8s_options = stacked(
    click.option(
        "--image",
        metavar="REF",
        help="Runtime image of the pods (docker/Dockerfile; "
        "default trusted-ml:VERSION, or trusted-ml-gramine:VERSION for --tee gramine).",
    ),
    click.option(
        "--namespace", metavar="NS", help="Namespace of every object (default trustedml)."
    ),
    click.option("--name", metavar="NAME", help="Application name (default tml-APP-RANDOM)."),
    click.option("--executors", type=int, help="Number of executor pods (default 2)."),
    click.option("--driver-cores", type=int, help="Driver CPU cores (default 1)."),
    click.option("--executor-cores", type=int, help="Cores per executor (default 1)."),
    click.option("--driver-memory", metavar="SIZE", help="Driver memory (default 2g)."),
    click.option("--executor-memory", metavar="SIZE", help="Executor memory (default 2g)."),
    click.option(
        "--pccs-url", metavar="URL", help="--tee gramine: PCCS the pods fetch DCAP collateral from."
    ),
    click.option(
        "--runtime-class",
        metavar="NAME",
        help="--tee cvm: Kata runtime class (default kata-qemu-tdx; kata-qemu-snp for SEV-SNP).",
    ),
    click.option(
        "--node-selector",
        "node_selectors",
        multiple=True,
        metavar="KEY=VALUE",
        help="Schedule driver and executors on nodes with this label (repeatable).",
    ),
    click.option(
        "--toleration",
        "tolerations",
        multiple=True,
        metavar="KEY[=VALUE]:EFFECT",
        help="Tolerate a taint of the TEE node pool (repeatable).",
    ),
    _kubeconfig,
    _context,
)
# The Kubernetes-only options (parameter name -> flag).
K8S_ONLY = {
    "image": "--image",
    "namespace": "--namespace",
    "name": "--name",
    "executors": "--executors",
    "driver_cores": "--driver-cores",
    "executor_cores": "--executor-cores",
    "driver_memory": "--driver-memory",
    "executor_memory": "--executor-memory",
    "pccs_url": "--pccs-url",
    "runtime_class": "--runtime-class",
    "node_selectors": "--node-selector",
    "tolerations": "--toleration",
    "kubeconfig": "--kubeconfig",
    "context": "--context",
}


def refuse_k8s_only(given: dict[str, Any]) -> None:
    """Usage error for a Kubernetes-only option given with another master."""
    for name, flag in K8S_ONLY.items():
        if given.get(name) not in (None, ()):
            if name == "kubeconfig" and os.environ.get(ENV_KUBECONFIG):
                continue  # from the environment: a standing setting, not a mistake
            raise ConfigError(f"{flag} applies to --master k8s://, not --master {given['master']}")


def kubernetes_options(
    given: dict[str, Any], app: Path, app_args: tuple[str, ...], py_files: tuple[Path, ...]
) -> KubernetesOptions:
    """The :class:`KubernetesOptions` the command line asks for."""
    selectors = {}
    for item in given.get("node_selectors", ()):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--node-selector: expected KEY=VALUE, got {item!r}")
        selectors[key] = value
    picked = {
        name: given[name]
        for name in (
            "image",
            "namespace",
            "name",
            "executors",
            "driver_cores",
            "executor_cores",
            "driver_memory",
            "executor_memory",
            "pccs_url",
            "runtime_class",
            "enclave_size",
        )
        if given.get(name) is not None
    }
    return KubernetesOptions(
        master=given["master"],
        app=app,
        app_args=app_args,
        tee=given["tee"],
        node_selector=selectors,
        tolerations=tuple(parse_toleration(t) for t in given.get("tolerations", ())),
        broker_url=given.get("broker_url"),
        py_files=py_files,
        conf=parse_conf(given.get("confs", ())),
        rpc_tls=given.get("rpc_tls", False),
        log_level=given.get("log_level", "WARN"),
        **picked,
    )


def _keys(given: dict[str, Any]) -> KeyDirectory:
    if given.get("keys_dir") is None:
        raise ConfigError(
            f"a Kubernetes job needs a key directory: --keys DIR or {ENV_KEYS} "
            "(create one with `trustedml keys init DIR`)"
        )
    return KeyDirectory(given["keys_dir"])


def _sim_key(given: dict[str, Any]) -> Path:
    return Path(given.get("sim_key") or os.environ.get(ENV_SIM_KEY) or default_sim_key_path())


def _show(rendered: RenderedApp) -> None:
    err_console.print(
        f"rendered {rendered.name} (--tee {rendered.options.tee}) into {rendered.out}"
    )
    if rendered.options.tee == "sim":
        err_console.print(
            "[bold yellow on red] SIMULATED TEE [/] [bold]--tee sim: the pods have NO hardware "
            "protection; a default broker policy refuses their evidence.[/]",
            markup=True,
        )


def submit_on_kubernetes(
    given: dict[str, Any], app: Path, app_args: tuple[str, ...], py_files: tuple[Path, ...]
) -> int:
    """`trustedml submit --master k8s://...`: render, then (unless --dry-run) apply,
    run the application in cluster mode and remove its objects."""
    refused = {
        "insecure": "--insecure (Kubernetes jobs are secure only)",
        "allow_insecure": "--allow-insecure-conf",
        "keks": "--kek (give the job a broker: --broker URL)",
        "local_dir": "--local-dir (pods use emptyDir volumes)",
        "driver_host": "--driver-host",
        "threads": "--threads",
        "isv_prod_id": "--isv-prod-id",
        "isv_svn": "--isv-svn",
        "manifest_dir": "--manifest-dir (the image holds the signed manifest)",
        "evidence_out": "--evidence-out",
        "expect_measurement": "--expect-measurement",
        "no_ui": "--no-ui",
    }
    for name, what in refused.items():
        if given.get(name) not in (None, (), False):
            raise ConfigError(f"{what}: not for --master k8s://")
    if given["tee"] not in K8S_TEES:
        raise ConfigError(
            f"--tee: expected one of {', '.join(K8S_TEES)} with --master k8s:// "
            f"(the driver runs in a TEE too), got {given['tee']!r}"
        )
    options = kubernetes_options(given, app, app_args, py_files)
    keys = _keys(given)
    out = Path(tempfile.mkdtemp(prefix=f"trustedml-{options.app_name}-"))
    rendered = render(options, keys, out, broker_ca=given.get("broker_ca"))
    if given.get("dry_run"):
        rendered.write()
        _show(rendered)
        out_console.print(json.dumps(list(rendered.argv)), soft_wrap=True)
        return 0
    try:
        passphrase = get_passphrase(given["passphrase_file"], given["prompt"])
        bundle = secret_bundle(rendered, keys, passphrase, sim_key=_sim_key(given))
        _show(rendered)
        return submit_kubernetes(
            rendered, bundle, kubeconfig=given.get("kubeconfig"), context=given.get("context")
        )
    finally:
        # The render holds no secret, but is this submission's alone.
        shutil.rmtree(out, ignore_errors=True)


@click.group("k8s", cls=Group, short_help="Spark on Kubernetes: render and apply a job.")
def k8s_group() -> None:
    """Spark on Kubernetes: render a trusted application's objects, apply them, delete them.

    `trustedml submit --master k8s://...` does all three for one job; `trustedml doctor
    --k8s DIR` checks a render (or any folder of manifests)."""


@k8s_group.command(
    "render",
    short_help="Write the manifests, Spark conf and argv of APP.",
    context_settings={"ignore_unknown_options": True},
)
@click.argument("app", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("app_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--master", required=True, metavar="k8s://https://HOST:PORT", help="API server.")
@click.option(
    "--keys",
    "keys_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=ENV_KEYS,
    help=f"Key directory from `trustedml keys init` (env {ENV_KEYS}).",
)
@click.option("--tee", type=click.Choice(K8S_TEES), required=True, help="TEE of every pod.")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder the manifests, Spark conf and argv are written to.",
)
@k8s_options
@click.option("--enclave-size", metavar="SIZE", help="--tee gramine: SGX EPC per pod (8G).")
@click.option("--broker", "broker_url", metavar="URL", help="Key broker the pods attest to.")
@click.option(
    "--broker-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="CA the pods verify the broker with (default: the CA of --keys).",
)
@click.option("--conf", "confs", multiple=True, metavar="KEY=VALUE", help="Extra Spark property.")
@click.option("--rpc-tls", is_flag=True, help="Use TLS for Spark RPC instead of AES-GCM.")
@click.option("--log-level", default="WARN", show_default=True, help="Spark log level.")
@click.option(
    "--py-files",
    "py_files",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Extra .py/.zip file shipped with the job (repeatable).",
)
@click.option(
    "--apply",
    "do_apply",
    is_flag=True,
    help="Also create the objects in the cluster, Secrets filled from --keys in memory.",
)
@click.option(
    "--sim-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"--tee sim --apply: the key the pods sign sim evidence with (env {ENV_SIM_KEY}).",
)
@passphrase_options
def render_command(
    app: Path, app_args: tuple[str, ...], py_files: tuple[Path, ...], **given: Any
) -> None:
    """Write every object APP needs on Kubernetes into --out: pod templates (the TEE of
    --tee), ServiceAccounts, a least-privilege Role and RoleBinding, a NetworkPolicy,
    ConfigMaps, Secret shells (no data: --apply fills them in memory), the Spark conf and
    the spark-submit command line. No secret value is written."""
    options = kubernetes_options(given, app, app_args, py_files)
    keys = _keys(given)
    rendered = render(options, keys, given["out"], broker_ca=given.get("broker_ca"))
    rendered.write()
    _show(rendered)
    if given["do_apply"]:
        passphrase = get_passphrase(given["passphrase_file"], given["prompt"])
        bundle = secret_bundle(rendered, keys, passphrase, sim_key=_sim_key(given))
        result = apply(
            rendered, bundle, kubeconfig=given.get("kubeconfig"), context=given.get("context")
        )
        for item in result.objects:
            err_console.print(f"{item.action} {item.kind} {rendered.namespace}/{item.name}")
    out_console.print(str(rendered.out))


@k8s_group.command("delete", short_help="Delete an application's objects from the cluster.")
@click.argument("name")
@click.option("--namespace", default="trustedml", show_default=True, help="Its namespace.")
@_kubeconfig
@_context
def delete_command(name: str, namespace: str, kubeconfig: Path | None, context: str | None) -> None:
    """Delete the objects `k8s render --apply` created for application NAME."""
    kinds = delete(name, namespace, kubeconfig=kubeconfig, context=context)
    err_console.print(f"deleted {', '.join(kinds) or 'nothing'} of {namespace}/{name}")


@k8s_group.command("spark-check", short_help="Build the pods with Spark's own code, offline.")
@click.argument(
    "renders",
    nargs=-1,
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
)
@click.option("--json", "as_json", is_flag=True, help="Print everything Spark built.")
def spark_check_command(renders: tuple[Path, ...], as_json: bool) -> None:
    """Run Spark's own Kubernetes submission code on each render folder with no cluster
    (its client refuses every request): the driver and executor pods and the objects
    Spark would create, after Spark merged its parts into the pod templates. A conf
    Spark refuses exits 1 with Spark's reason."""
    specs = spark_pod_specs(renders)
    if as_json:
        out_console.print_json(json.dumps([dict(spec.document) for spec in specs]))
        return
    for spec in specs:
        objects = [*spec.pre_resources, *spec.resources]
        made = ", ".join(f"{o['kind']} {o['metadata']['name']}" for o in objects)
        refs = sorted(
            env["name"]
            for env in spec.driver_container.get("env", [])
            if "secretKeyRef" in env.get("valueFrom", {})
        )
        out_console.print(
            f"{spec.source}: Spark built driver pod {spec.driver_pod['metadata']['name']} "
            f"and executor pod {spec.executor_pod['metadata']['name']}; "
            f"from Secrets: {', '.join(refs) or 'nothing'}; it would also create: {made}",
            soft_wrap=True,
        )
