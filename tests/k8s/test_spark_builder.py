"""Spark's own Kubernetes submission code accepts each render and builds the pods we
expect: secrets only by reference, the TEE parts kept, no secret value anywhere."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSPHRASE
from tests.k8s.conftest import Render
from tests.secret_scan import hits
from trustedml import KeyDirectory, Secret
from trustedml.errors import KubernetesError
from trustedml.k8s import (
    RenderedApp,
    SecretBundle,
    SparkPodSpecs,
    secret_bundle,
    spark_pod_specs,
)
from trustedml.spark import properties_text

TEES = ("gramine", "cvm", "sim")
APP_RESOURCE = "local:///opt/trustedml/app/count_app.py"
SECRET_ENV = {
    "TRUSTEDML_SSL_KEYSTORE_PASSWORD": "keystore-password",
    "TRUSTEDML_SSL_TRUSTSTORE_PASSWORD": "truststore-password",
}
AUTH_ENV = "_SPARK_AUTH_SECRET"
CANARY = "canary-" + secrets.token_hex(16)


class Checked:
    """The three renders, their Secret data, and what Spark's code made of them (plus a
    deliberately weak configuration, built in the same JVM run)."""

    def __init__(
        self,
        renders: dict[str, RenderedApp],
        bundles: dict[str, SecretBundle],
        specs: dict[str, SparkPodSpecs],
        auth_file: Path,
    ) -> None:
        self.renders = renders
        self.bundles = bundles
        self.specs = specs
        self.auth_file = auth_file


@pytest.fixture(scope="module")
def checked(
    render_for: Render, session_keys: KeyDirectory, tmp_path_factory: pytest.TempPathFactory
) -> Checked:
    scratch = tmp_path_factory.mktemp("spark-builder")
    renders = {tee: render_for(tee) for tee in TEES}
    bundles = {
        tee: secret_bundle(r, session_keys, Secret(PASSPHRASE), sim_key=scratch / "sim-key.pem")
        for tee, r in renders.items()
    }
    # The driver's SecurityManager holds a real application secret (the cvm one's); a
    # pod spec that carried the auth secret would carry this value.
    cvm = renders["cvm"]
    auth_file = scratch / "auth-secret"
    auth_file.write_bytes(bundles["cvm"][f"{cvm.name}-auth"]["spark-auth-secret"].reveal())
    auth_file.chmod(0o600)
    # Weak: no auth secret file (Spark then hands executors the secret in their env) and
    # a literal password (a canary, not a real one).
    weak = {k: v for k, v in cvm.conf.items() if not k.startswith("spark.authenticate.secret")}
    weak["spark.ssl.keyStorePassword"] = CANARY
    weak_file = scratch / "weak.properties"
    weak_file.write_text(properties_text(weak))
    sources: list[Path | RenderedApp] = [renders[tee] for tee in TEES]
    found = spark_pod_specs(
        [*sources, weak_file],
        app=APP_RESOURCE,
        app_args=("--rows", "10"),
        auth_secret_file=auth_file,
    )
    specs = dict(zip([*TEES, "weak"], found, strict=True))
    return Checked(renders, bundles, specs, auth_file)


def _env(container: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _containers(spec: SparkPodSpecs) -> dict[str, Mapping[str, Any]]:
    return {"driver": spec.driver_container, "executor": spec.executor_container}


def _pods(spec: SparkPodSpecs) -> dict[str, Mapping[str, Any]]:
    return {"driver": spec.driver_pod, "executor": spec.executor_pod}


def _walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        yield from _walk(child)


@pytest.mark.parametrize("tee", TEES)
def test_passwords_reach_both_containers_only_by_secret_key_ref(checked: Checked, tee: str) -> None:
    app = checked.renders[tee].name
    for role, container in _containers(checked.specs[tee]).items():
        env = _env(container)
        for name, key in SECRET_ENV.items():
            assert name in env, f"{tee} {role}: no {name}"
            assert "value" not in env[name]
            assert env[name]["valueFrom"] == {"secretKeyRef": {"name": f"{app}-tls", "key": key}}
    # Spark puts the container in the pod it creates: the same env is there.
    pod_container = checked.specs[tee].executor_pod["spec"]["containers"][0]
    assert _env(pod_container)["TRUSTEDML_SSL_KEYSTORE_PASSWORD"]["valueFrom"]["secretKeyRef"]


@pytest.mark.parametrize("tee", TEES)
def test_spark_never_puts_the_auth_secret_in_a_pod(checked: Checked, tee: str) -> None:
    names = [
        n["name"]
        for n in _walk(dict(checked.specs[tee].document))
        if isinstance(n, dict) and "name" in n
    ]
    assert AUTH_ENV not in names
    assert "spark.authenticate.secret" not in checked.specs[tee].driver_system_properties


def test_the_weak_configuration_shows_what_the_checks_catch(checked: Checked) -> None:
    weak = checked.specs["weak"]
    # Without spark.authenticate.secret.file Spark passes the secret in the executor env
    env = _env(weak.executor_container)
    assert AUTH_ENV in env
    assert len(env[AUTH_ENV]["value"]) == 64
    # and a literal password travels in the driver's ConfigMap and the executor options.
    found = hits({"weak": json.dumps(weak.document).encode()}, {"canary": CANARY.encode()})
    assert any("raw bytes" in hit for hit in found), found
    assert CANARY in weak.driver_conf_map["data"]["spark.properties"]


@pytest.mark.parametrize("tee", TEES)
def test_secret_volumes_are_mounted_where_the_design_says(checked: Checked, tee: str) -> None:
    app = checked.renders[tee].name
    wanted = {f"{app}-auth": "/etc/trustedml/auth", f"{app}-tls": "/etc/trustedml/tls"}
    if tee == "sim":
        wanted[f"{app}-sim"] = "/etc/trustedml/sim"
    for role, pod in _pods(checked.specs[tee]).items():
        secret_volumes = {
            v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v
        }
        mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
        mounted = {
            secret_volumes[name]: path for name, path in mounts.items() if name in secret_volumes
        }
        assert mounted == wanted, f"{tee} {role}"


def _limits(container: Mapping[str, Any]) -> Mapping[str, str]:
    return container["resources"]["limits"]


@pytest.mark.parametrize("role", ["driver", "executor"])
def test_sgx_resources_and_aesm_survive_sparks_merge(checked: Checked, role: str) -> None:
    spec = checked.specs["gramine"]
    pod, container = _pods(spec)[role], _containers(spec)[role]
    limits = _limits(container)
    assert limits["sgx.intel.com/epc"] == "8Gi"
    assert limits["sgx.intel.com/enclave"] == "1"
    assert limits["sgx.intel.com/provision"] == "1"
    aesmd = [v for v in pod["spec"]["volumes"] if v["name"] == "aesmd"]
    assert aesmd == [{"name": "aesmd", "hostPath": {"path": "/var/run/aesmd", "type": "Directory"}}]
    assert {"name": "aesmd", "mountPath": "/var/run/aesmd"} in container["volumeMounts"]
    assert pod["spec"]["nodeSelector"]["intel.feature.node.kubernetes.io/sgx"] == "true"
    assert _env(container)["TRUSTEDML_TEE"]["value"] == "gramine"
    assert _env(container)["PCCS_URL"]["value"] == "https://198.18.0.3:8081"


@pytest.mark.parametrize("role", ["driver", "executor"])
def test_the_kata_runtime_class_survives_sparks_merge(checked: Checked, role: str) -> None:
    spec = checked.specs["cvm"]
    pod = _pods(spec)[role]
    assert pod["spec"]["runtimeClassName"] == "kata-qemu-tdx"
    assert pod["spec"]["nodeSelector"]["katacontainers.io/kata-runtime"] == "true"
    assert _env(_containers(spec)[role])["TRUSTEDML_TEE"]["value"] == "cvm"
    assert not any("sgx.intel.com" in k for k in _limits(_containers(spec)[role]))


@pytest.mark.parametrize("tee", TEES)
def test_pods_stay_unprivileged_after_sparks_merge(checked: Checked, tee: str) -> None:
    for role, pod in _pods(checked.specs[tee]).items():
        spec = pod["spec"]
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), role
        context = spec["containers"][0]["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context.get("privileged") is not True
        assert pod["metadata"]["labels"]["trustedml.io/role"] == role
    sim = checked.specs["sim"].executor_pod["metadata"]["annotations"]
    assert sim["trustedml.io/warning"] == "SIMULATED TEE: no hardware protection"


@pytest.mark.parametrize("tee", TEES)
def test_the_driver_runs_sparks_own_command(checked: Checked, tee: str) -> None:
    spec = checked.specs[tee]
    assert spec.driver_container["args"] == [
        "driver",
        "--properties-file",
        "/opt/spark/conf/spark.properties",
        "--class",
        "org.apache.spark.deploy.PythonRunner",
        APP_RESOURCE,
        "--rows",
        "10",
    ]
    assert spec.executor_container["args"] == ["executor"]
    assert spec.driver_container["name"] == "spark-driver"
    assert spec.executor_container["name"] == "spark-executor"
    app = checked.renders[tee].name
    # Only the driver holds an API token (it creates the executors).
    assert spec.driver_pod["spec"]["serviceAccountName"] == f"{app}-driver"
    assert spec.driver_pod["spec"]["automountServiceAccountToken"] is True
    assert spec.executor_pod["spec"]["serviceAccountName"] == f"{app}-executor"
    assert spec.executor_pod["spec"]["automountServiceAccountToken"] is False


def test_no_secret_value_in_any_pod_conf_or_argv(checked: Checked) -> None:
    values: dict[str, bytes] = {}
    for tee, bundle in checked.bundles.items():
        for name, keys in bundle.items():
            for key, value in keys.items():
                values[f"{tee} {name}/{key}"] = value.reveal()
    assert len(values) == 3 * 5 + 1
    blobs: dict[str, bytes] = {}
    for tee in TEES:
        rendered = checked.renders[tee]
        blobs[f"{tee}: Spark's pods, ConfigMaps and properties"] = json.dumps(
            checked.specs[tee].document
        ).encode()
        blobs[f"{tee}: the would-be argv"] = json.dumps(list(rendered.argv)).encode()
        for path in sorted(rendered.out.iterdir()):
            blobs[f"{tee}: {path.name}"] = path.read_bytes()
    assert hits(blobs, values) == []


def test_a_bad_pod_template_is_refused_by_sparks_builder(checked: Checked, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-driver-pod.yaml"
    conf = {**checked.renders["cvm"].conf, "spark.kubernetes.driver.podTemplateFile": str(missing)}
    props = tmp_path / "bad.properties"
    props.write_text(properties_text(conf))
    with pytest.raises(KubernetesError) as caught:
        spark_pod_specs([props], app=APP_RESOURCE)
    message = str(caught.value)
    assert "Could not load pod from template file" in message
    assert str(missing) in message
    assert str(props) in message
