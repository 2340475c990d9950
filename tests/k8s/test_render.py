"""A render: valid against the Kubernetes schemas for every TEE, its TEE parts and least
privilege, and no secret value in its conf, pod templates, argv or any file."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import PASSPHRASE
from tests.k8s.conftest import BROKER, MASTER, Render, options_for
from tests.secret_scan import encodings, hits
from trustedml import ConfigError, KeyDirectory, Secret
from trustedml.errors import KubernetesError
from trustedml.k8s import (
    FILES,
    K8S_TEES,
    KubernetesOptions,
    RenderedApp,
    SecretBundle,
    Toleration,
    render,
    secret_bundle,
)
from trustedml.keys import SecretName
from trustedml.spark import read_properties

# The oldest release the issue names and the newest the schema package ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def documents(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Every YAML document of a render, by file."""
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        for path in sorted(out.glob("*.yaml"))
    }


@pytest.fixture(scope="module")
def renders(render_for: Render) -> dict[str, RenderedApp]:
    return {tee: render_for(tee) for tee in K8S_TEES}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("tee", K8S_TEES)
def test_every_manifest_validates_against_the_kubernetes_schemas(
    renders: dict[str, RenderedApp], tee: str, version: str
) -> None:
    docs = documents(renders[tee].out)
    assert set(docs) == {name for name in FILES if name.endswith(".yaml")}
    kinds = []
    for found in docs.values():
        for doc in found:
            # Strict: a misspelt field is an error, not silently dropped by the server.
            kubernetes_validate.validate(doc, version, strict=True)
            kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(
        ["Pod", "Pod", "ServiceAccount", "ServiceAccount", "Role", "RoleBinding"]
        + ["NetworkPolicy", "ConfigMap", "ConfigMap"]
        + ["Secret"] * (3 if tee == "sim" else 2)
    )


def test_the_schema_check_rejects_a_broken_manifest(renders: dict[str, RenderedApp]) -> None:
    # The check above can fail: a field of the wrong type and an unknown field.
    pod = documents(renders["cvm"].out)["driver-pod.yaml"][0]
    pod["spec"]["hostNetwork"] = "no"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSIONS[0], strict=True)
    pod = documents(renders["cvm"].out)["driver-pod.yaml"][0]
    pod["spec"]["privilegedd"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSIONS[0], strict=True)


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["spec"]["containers"]
    return container


@pytest.mark.parametrize("role", ["driver", "executor"])
def test_gramine_pods_ask_for_sgx_and_reach_aesm(
    renders: dict[str, RenderedApp], role: str
) -> None:
    rendered = renders["gramine"]
    pod = getattr(rendered, f"{role}_template")
    limits = _container(pod)["resources"]["limits"]
    assert limits == {
        "sgx.intel.com/epc": "8Gi",
        "sgx.intel.com/enclave": "1",
        "sgx.intel.com/provision": "1",
    }
    assert {"name": "aesmd", "hostPath": {"path": "/var/run/aesmd", "type": "Directory"}} in pod[
        "spec"
    ]["volumes"]
    assert pod["spec"]["nodeSelector"] == {"intel.feature.node.kubernetes.io/sgx": "true"}
    assert "runtimeClassName" not in pod["spec"]
    env = {e["name"]: e["value"] for e in _container(pod)["env"]}
    assert env["TRUSTEDML_TEE"] == "gramine"
    assert env["PCCS_URL"] == "https://198.18.0.3:8081"
    qcnl = rendered.of_kind("ConfigMap")[1]["data"]["sgx_default_qcnl.conf"]
    assert json.loads(qcnl)["pccs_url"].startswith("https://198.18.0.3:8081/")


def test_cvm_pods_run_in_a_confidential_runtime_on_the_chosen_pool(
    render_for: Render,
) -> None:
    rendered = render_for(
        "cvm",
        runtime_class="kata-qemu-snp",
        node_selector={"pool": "snp"},
        tolerations=(Toleration("tee", "NoSchedule", "snp"), Toleration("cvm", "NoExecute")),
    )
    for pod in (rendered.driver_template, rendered.executor_template):
        spec = pod["spec"]
        assert spec["runtimeClassName"] == "kata-qemu-snp"
        assert spec["nodeSelector"] == {"katacontainers.io/kata-runtime": "true", "pool": "snp"}
        assert spec["tolerations"] == [
            {"key": "tee", "operator": "Equal", "value": "snp", "effect": "NoSchedule"},
            {"key": "cvm", "operator": "Exists", "effect": "NoExecute"},
        ]
        assert "resources" not in _container(pod)


def test_sim_pods_say_they_are_simulated(renders: dict[str, RenderedApp]) -> None:
    pod = renders["sim"].driver_template
    assert pod["metadata"]["labels"]["trustedml.io/tee"] == "sim"
    assert "no hardware protection" in pod["metadata"]["annotations"]["trustedml.io/warning"]
    assert "runtimeClassName" not in pod["spec"]
    assert "resources" not in _container(pod)


@pytest.mark.parametrize("tee", K8S_TEES)
def test_pods_are_locked_down(renders: dict[str, RenderedApp], tee: str) -> None:
    for role in ("driver", "executor"):
        pod = getattr(renders[tee], f"{role}_template")
        spec = pod["spec"]
        assert (spec["hostNetwork"], spec["hostPID"], spec["hostIPC"]) == (False, False, False)
        assert spec["automountServiceAccountToken"] is (role == "driver")
        assert spec["serviceAccountName"] == f"{renders[tee].name}-{role}"
        context = _container(pod)["securityContext"]
        assert context["privileged"] is False
        assert context["allowPrivilegeEscalation"] is False
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] != 0
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_the_driver_role_is_namespaced_and_least_privilege(
    renders: dict[str, RenderedApp],
) -> None:
    rendered = renders["cvm"]
    (role,) = rendered.of_kind("Role")
    (binding,) = rendered.of_kind("RoleBinding")
    grants = {r["resources"][0]: set(r["verbs"]) for r in role["rules"]}
    assert set(grants) == {"pods", "configmaps", "services"}
    assert "*" not in set().union(*grants.values())
    assert grants["services"] == {"get", "list"}
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": f"{rendered.name}-driver",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{rendered.name}-driver", "namespace": "ml-jobs"}
    ]
    accounts = {a["metadata"]["name"]: a for a in rendered.of_kind("ServiceAccount")}
    assert accounts[f"{rendered.name}-executor"]["automountServiceAccountToken"] is False


def test_the_network_policy_admits_only_the_app_dns_api_broker_and_pccs(
    renders: dict[str, RenderedApp],
) -> None:
    rendered = renders["gramine"]
    (policy,) = rendered.of_kind("NetworkPolicy")
    spec = policy["spec"]
    own = {"podSelector": {"matchLabels": {"trustedml.io/app": rendered.name}}}
    assert spec["podSelector"] == own["podSelector"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"from": [own]}]
    blocks = {
        rule["to"][0]["ipBlock"]["cidr"]: [p["port"] for p in rule["ports"]]
        for rule in spec["egress"]
        if "to" in rule and "ipBlock" in rule["to"][0]
    }
    assert blocks == {"198.18.0.1/32": [6443], "198.18.0.2/32": [8443], "198.18.0.3/32": [8081]}
    assert {"to": [own]} in spec["egress"]
    dns = [r for r in spec["egress"] if "to" not in r]
    assert dns == [{"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]


def test_a_named_api_server_gets_its_ports_not_an_address(
    k8s_app: Path, session_keys: KeyDirectory, tmp_path: Path
) -> None:
    options = options_for(k8s_app, "cvm", master="k8s://https://api.example:6443")
    (policy,) = render(options, session_keys, tmp_path).of_kind("NetworkPolicy")
    rule = policy["spec"]["egress"][2]
    assert rule == {"ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}]}


def test_the_spark_conf_is_the_secure_conf_with_secrets_by_reference(
    renders: dict[str, RenderedApp],
) -> None:
    rendered = renders["sim"]
    app = rendered.name
    on_disk = {p.key: p.value for p in read_properties(rendered.out / "spark.properties")}
    assert on_disk == dict(rendered.conf)
    conf = rendered.conf
    assert conf["spark.authenticate"] == "true"
    assert conf["spark.network.crypto.cipher"] == "AES/GCM/NoPadding"
    assert conf["spark.io.encryption.enabled"] == "true"
    assert conf["spark.ssl.enabled"] == "true"
    assert "spark.authenticate.secret" not in conf  # Spark would ship it in pod env
    assert conf["spark.authenticate.secret.file"] == "/etc/trustedml/auth/spark-auth-secret"
    for role in ("driver", "executor"):
        assert conf[f"spark.kubernetes.{role}.secrets.{app}-auth"] == "/etc/trustedml/auth"
        assert conf[f"spark.kubernetes.{role}.secrets.{app}-tls"] == "/etc/trustedml/tls"
        assert conf[f"spark.kubernetes.{role}.secrets.{app}-sim"] == "/etc/trustedml/sim"
        ref = conf[f"spark.kubernetes.{role}.secretKeyRef.TRUSTEDML_SSL_KEYSTORE_PASSWORD"]
        assert ref == f"{app}-tls:keystore-password"
        assert conf[f"spark.kubernetes.{role}.podTemplateFile"] == str(
            rendered.out / f"{role}-pod.yaml"
        )
    assert conf["spark.kubernetes.namespace"] == "ml-jobs"
    assert conf["spark.master"] == MASTER
    assert json.loads((rendered.out / "spark-submit.json").read_text()) == list(rendered.argv)
    assert rendered.argv[-3:] == ("local:///opt/trustedml/app/count_app.py", "--rows", "10")


def test_secrets_are_shells_and_every_file_is_private(renders: dict[str, RenderedApp]) -> None:
    rendered = renders["sim"]
    shells = documents(rendered.out)["secrets.yaml"]
    listed = {
        s["metadata"]["name"]: s["metadata"]["annotations"]["trustedml.io/keys"] for s in shells
    }
    assert listed == {name: ",".join(keys) for name, keys in rendered.secrets.items()}
    assert all("data" not in s and "stringData" not in s for s in shells)
    for name in FILES:
        assert (rendered.out / name).stat().st_mode & 0o777 == 0o600
    assert json.loads((rendered.out / "render.json").read_text())["secrets"] == {
        name: list(keys) for name, keys in rendered.secrets.items()
    }


def _bundle(rendered: RenderedApp, keys: KeyDirectory, tmp: Path) -> SecretBundle:
    return secret_bundle(rendered, keys, Secret(PASSPHRASE), sim_key=tmp / "sim-key.pem")


def _values(bundle: SecretBundle) -> dict[str, bytes]:
    return {
        f"{name}/{key}": value.reveal() for name in bundle for key, value in bundle[name].items()
    }


def test_each_application_gets_a_fresh_auth_secret(
    render_for: Render, session_keys: KeyDirectory, tmp_path: Path
) -> None:
    first, second = render_for("cvm"), render_for("cvm")
    assert first.name != second.name
    one, two = _bundle(first, session_keys, tmp_path), _bundle(second, session_keys, tmp_path)
    auth_one = one[f"{first.name}-auth"]["spark-auth-secret"].reveal()
    auth_two = two[f"{second.name}-auth"]["spark-auth-secret"].reveal()
    assert auth_one != auth_two
    assert len(auth_one) == 64
    # Not derived from the key directory's own Spark secret either.
    own = session_keys.unseal(Secret(PASSPHRASE)).spark_auth_secret.reveal()
    assert own not in (auth_one, auth_two)
    assert "keystore-password" in repr(one)
    assert auth_one.decode() not in repr(one)


@pytest.mark.parametrize("tee", K8S_TEES)
def test_no_secret_value_in_conf_templates_argv_or_any_rendered_file(
    renders: dict[str, RenderedApp], session_keys: KeyDirectory, tmp_path: Path, tee: str
) -> None:
    rendered = renders[tee]
    bundle = _bundle(rendered, session_keys, tmp_path)
    secrets = _values(bundle)
    opened = session_keys.unseal(Secret(PASSPHRASE))
    secrets["key directory Spark secret"] = opened.spark_auth_secret.reveal()
    secrets["enclave signing key"] = opened[SecretName.ENCLAVE_SIGNING_KEY].reveal()
    secrets["passphrase"] = PASSPHRASE.encode()
    assert len(secrets) == (9 if tee == "sim" else 8)
    blobs = {f"file {p.name}": p.read_bytes() for p in rendered.out.iterdir()}
    blobs["conf"] = json.dumps(dict(rendered.conf)).encode()
    blobs["driver template"] = json.dumps(rendered.driver_template).encode()
    blobs["executor template"] = json.dumps(rendered.executor_template).encode()
    blobs["argv"] = "\0".join(rendered.argv).encode()
    blobs["objects"] = json.dumps(rendered.objects).encode()
    assert hits(blobs, secrets) == []


def test_the_scan_finds_a_planted_secret(
    renders: dict[str, RenderedApp], session_keys: KeyDirectory, tmp_path: Path
) -> None:
    # The scan above can fail: each encoding of a real value planted in a real file.
    rendered = renders["cvm"]
    bundle = _bundle(rendered, session_keys, tmp_path)
    password = bundle[f"{rendered.name}-tls"]["keystore-password"].reveal()
    original = (rendered.out / "configmaps.yaml").read_bytes()
    for how, text in encodings(password).items():
        found = hits({"configmaps.yaml": original + text}, {"password": password})
        assert found, how


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"master": "spark://h:7077"}, "expected k8s://https://HOST:PORT"),
        ({"master": "k8s://http://h:6443"}, "expected https://HOST[:PORT]"),
        ({"tee": "none"}, "the driver runs in a TEE too"),
        ({"namespace": "Bad_NS"}, "expected a DNS-1123 label"),
        ({"name": "x" * 41}, "at most 40 characters"),
        ({"image": "bad image"}, "expected an image reference"),
        ({"executors": 0}, "expected 1 to 1024"),
        ({"executor_memory": "lots"}, "expected a size"),
        ({"runtime_class": "kata-qemu-tdx"}, "--runtime-class applies to --tee cvm"),
        ({"enclave_size": "8G", "tee": "cvm"}, "--enclave-size applies to --tee gramine"),
        ({"conf": {"spark.authenticate": "false"}}, "managed by the secure configuration"),
        ({"conf": {"spark.kubernetes.driver.podTemplateFile": "/x"}}, "refused"),
        ({"conf": {"spark.kubernetes.driver.secretKeyRef.X": "s:k"}}, "secrets may not be"),
        ({"node_selector": {"bad key!": "v"}}, "--node-selector"),
        ({"broker_url": "http://b:80"}, "--broker"),
    ],
)
def test_bad_options_are_refused_saying_what_was_expected(
    k8s_app: Path, change: dict[str, Any], message: str
) -> None:
    given: dict[str, Any] = {"master": MASTER, "app": k8s_app, "tee": "sim", "broker_url": BROKER}
    given.update(change)
    with pytest.raises(ConfigError, match=re.escape(message)):
        KubernetesOptions(**given)


def test_a_bad_toleration_is_refused() -> None:
    with pytest.raises(ConfigError, match="expected an effect"):
        Toleration("tee", "Sometimes")


def test_the_same_name_renders_the_same_measured_conf(render_for: Render) -> None:
    # The README's walkthrough measures one render and submits another with the same
    # --name: everything the driver pod measures must match (the folders differ).
    from trustedml.k8s._pod_tee import pod_conf

    first, second = render_for("cvm", name="pi"), render_for("cvm", name="pi")
    assert first.out != second.out
    assert pod_conf(first.conf) == pod_conf(second.conf)
    other = render_for("cvm", name="pi", executors=3)
    assert pod_conf(other.conf) != pod_conf(first.conf)


def test_without_the_k8s_extra_writing_says_which_extra(
    render_for: Render, k8s_app: Path, session_keys: KeyDirectory, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    rendered = render(options_for(k8s_app, "cvm"), session_keys, tmp_path / "out")
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if pyyaml were not installed
    with pytest.raises(KubernetesError, match=re.escape("pip install 'trusted-ml[k8s]'")):
        rendered.write()
