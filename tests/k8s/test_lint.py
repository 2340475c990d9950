"""`doctor --k8s`: the project's own renders pass; a render weakened in one place
fires that rule, naming the file and object; unreadable folders are one clear error."""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.k8s.conftest import Render
from trustedml.errors import KubernetesError
from trustedml.k8s import K8S_LINT_RULES, lint_manifests
from trustedml.spark import Finding, Severity

ROOT = Path(__file__).resolve().parents[2]
# A stand-in secret value: no finding may ever show it.
VALUE = "hunter2-not-for-print-5f1e"
Edit = Callable[[Path], None]
TEE = "trustedml.io/tee"
EPC = "sgx.intel.com/epc"
PROVISION = "sgx.intel.com/provision"


@pytest.fixture(scope="module")
def renders(render_for: Render) -> dict[str, Path]:
    return {tee: render_for(tee).out for tee in ("gramine", "cvm", "sim")}


def _copy(renders: dict[str, Path], tee: str, tmp_path: Path) -> Path:
    folder = tmp_path / f"weak-{tee}"
    shutil.copytree(renders[tee], folder)
    return folder


def _ids(findings: list[Finding]) -> set[str]:
    return {f.id for f in findings}


def _serious(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is not Severity.LOW]


# -- editing a render ----------------------------------------------------------------


def _yaml(name: str, change: Callable[[list[Any]], None]) -> Edit:
    def edit(folder: Path) -> None:
        path = folder / name
        docs = list(yaml.safe_load_all(path.read_text())) if path.exists() else []
        change(docs)
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))

    return edit


def _pod(role: str, change: Callable[[dict[str, Any]], None]) -> Edit:
    return _yaml(f"{role}-pod.yaml", lambda docs: change(docs[0]))


def _container(role: str, change: Callable[[dict[str, Any]], None]) -> Edit:
    return _pod(role, lambda pod: change(pod["spec"]["containers"][0]))


def _security(role: str, **values: Any) -> Edit:
    return _container(role, lambda c: c["securityContext"].update(values))


def _kind(docs: list[Any], *kinds: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] in kinds)


def _props(change: Callable[[list[str]], list[str]]) -> Edit:
    def edit(folder: Path) -> None:
        path = folder / "spark.properties"
        path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")

    return edit


def _argv(*extra: str) -> Edit:
    def edit(folder: Path) -> None:
        path = folder / "spark-submit.json"
        argv = json.loads(path.read_text())
        path.write_text(json.dumps(argv[:1] + list(extra) + argv[1:]))

    return edit


def _app(folder: Path) -> str:
    return str(json.loads((folder / "render.json").read_text())["app"])


def _fill_secret(**data: str) -> Edit:
    def change(docs: list[Any]) -> None:
        docs[0]["stringData"] = dict(data)

    return _yaml("secrets.yaml", change)


def _trust_entry(key: str, value: str, field: str = "data") -> Edit:
    def change(docs: list[Any]) -> None:
        docs[1].setdefault(field, {})[key] = value

    return _yaml("configmaps.yaml", change)


def _pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _keystore_in_configmap(folder: Path) -> None:
    # A real PKCS#12 keystore (cryptography's), under an innocent name.
    blob = pkcs12.serialize_key_and_certificates(
        b"k", ec.generate_private_key(ec.SECP256R1()), None, None,
        serialization.BestAvailableEncryption(b"pw"),
    )  # fmt: skip
    _trust_entry("bundle.bin", base64.b64encode(blob).decode(), "binaryData")(folder)


def _other_app_pod(folder: Path) -> None:
    app = _app(folder)

    def change(docs: list[Any]) -> None:
        pod = yaml.safe_load((folder / "executor-pod.yaml").read_text())
        pod["metadata"]["name"] = "other-worker"
        pod["metadata"]["labels"]["trustedml.io/app"] = "other"
        pod["spec"]["volumes"].append({"name": "auth", "secret": {"secretName": f"{app}-auth"}})
        docs.append(pod)

    _yaml("other.yaml", change)(folder)


def _shared_auth(folder: Path) -> None:
    app = _app(folder)
    _props(lambda lines: [line.replace(f"{app}-auth=", "team-auth=") for line in lines])(folder)


def _equal_secrets(folder: Path) -> None:
    def change(docs: list[Any]) -> None:
        docs[0]["stringData"] = {"spark-auth-secret": VALUE}
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "old-auth"}})
        docs[-1]["data"] = {"spark-auth-secret": base64.b64encode(VALUE.encode()).decode()}

    _yaml("secrets.yaml", change)(folder)


def _secret_in_configmap(folder: Path) -> None:
    _fill_secret(**{"spark-auth-secret": VALUE})(folder)
    _trust_entry("notes.txt", f"the auth secret is {VALUE}")(folder)


def _last_applied(folder: Path) -> None:
    def change(docs: list[Any]) -> None:
        applied = {"kind": "Secret", "stringData": {"spark-auth-secret": VALUE}}
        note = {"kubectl.kubernetes.io/last-applied-configuration": json.dumps(applied)}
        docs[0]["metadata"]["annotations"].update(note)

    _yaml("secrets.yaml", change)(folder)


def _policy(change: Callable[[dict[str, Any]], None]) -> Edit:
    return _yaml("networkpolicy.yaml", lambda docs: change(docs[0]["spec"]))


def _role(change: Callable[[dict[str, Any]], None]) -> Edit:
    return _yaml("rbac.yaml", lambda docs: change(_kind(docs, "Role", "ClusterRole")))


def _binding_to_cluster_role(docs: list[Any]) -> None:
    _kind(docs, "RoleBinding")["roleRef"].update({"kind": "ClusterRole", "name": "edit"})


def _drop_label(label: str) -> Callable[[dict[str, Any]], None]:
    return lambda pod: pod["metadata"]["labels"].pop(label)


def _drop_limit(resource: str) -> Callable[[dict[str, Any]], None]:
    return lambda c: c["resources"]["limits"].pop(resource)


Case = tuple[str, str, str, Edit, frozenset[str]]


def case(rule: str, tee: str, file: str, edit: Edit, *also: str) -> Case:
    """Render for ``tee``, apply ``edit``: ``rule`` fires at ``file`` (``also`` may too)."""
    return (rule, tee, file, edit, frozenset(also))


def _env(name: str) -> Edit:
    return _container("driver", lambda c: c["env"].append({"name": name, "value": VALUE}))


def _annotate(role: str, key: str) -> Edit:
    return _pod(role, lambda p: p["metadata"].setdefault("annotations", {}).update({key: VALUE}))


def _pop_security(role: str, key: str) -> Edit:
    return _container(role, lambda c: c["securityContext"].pop(key))


def _root_allowed(pod: dict[str, Any]) -> None:
    pod["spec"]["securityContext"].pop("runAsNonRoot")
    pod["spec"]["containers"][0]["securityContext"].pop("runAsNonRoot")


def _spec(role: str, **values: Any) -> Edit:
    return _pod(role, lambda p: p["spec"].update(values))


def _replace(old: str, new: str) -> Edit:
    return _props(lambda lines: [line.replace(old, new) for line in lines])


AUTH = "spark.authenticate.secret"
CASES: list[Case] = [
    case("TML-K001", "gramine", "spark-submit.json", _argv("--conf", f"spark.x.password={VALUE}")),
    case(
        "TML-K001",
        "gramine",
        "executor-pod.yaml",
        _container("executor", lambda c: c.update(args=["--keystore-password", VALUE])),
    ),
    case(
        "TML-K001",
        "gramine",
        "driver-pod.yaml",
        _container(
            "driver", lambda c: c.update(command=["sh", "-c", f"x --conf a.password={VALUE}"])
        ),
    ),
    case("TML-K002", "gramine", "spark.properties", _props(lambda x: [*x, AUTH + "=${env:X}"])),
    case("TML-K002", "cvm", "spark-submit.json", _argv("--conf", f"{AUTH}={VALUE}")),
    case("TML-K003", "gramine", "configmaps.yaml", _trust_entry("db-password", VALUE)),
    case("TML-K003", "gramine", "configmaps.yaml", lambda f: _trust_entry("x.pem", _pem())(f)),
    case("TML-K003", "gramine", "configmaps.yaml", _keystore_in_configmap),
    case("TML-K003", "gramine", "configmaps.yaml", _secret_in_configmap, "TML-K017"),
    case(
        "TML-K003",
        "gramine",
        "configmaps.yaml",
        _trust_entry("spark-defaults.conf", f"spark.ssl.keyPassword {VALUE}\n"),
    ),
    case("TML-K004", "gramine", "driver-pod.yaml", _env("DB_PASSWORD")),
    case(
        "TML-K004", "gramine", "executor-pod.yaml", _annotate("executor", "example.com/api-token")
    ),
    case("TML-K004", "sim", "secrets.yaml", _last_applied, "TML-K014"),
    case("TML-K005", "gramine", "spark.properties", _shared_auth),
    case("TML-K005", "gramine", "other.yaml", _other_app_pod, "TML-K011"),
    case("TML-K006", "gramine", "secrets.yaml", _equal_secrets, "TML-K017"),
    case(
        "TML-K007",
        "gramine",
        "spark.properties",
        _props(lambda x: [y for y in x if "file=" not in y]),
    ),
    case("TML-K008", "gramine", "executor-pod.yaml", _security("executor", privileged=True)),
    case(
        "TML-K008",
        "gramine",
        "driver-pod.yaml",
        _pop_security("driver", "allowPrivilegeEscalation"),
    ),
    case(
        "TML-K008",
        "cvm",
        "executor-pod.yaml",
        _security("executor", capabilities={"add": ["SYS_ADMIN"], "drop": ["ALL"]}),
    ),
    case("TML-K009", "gramine", "driver-pod.yaml", _security("driver", runAsUser=0)),
    case("TML-K009", "cvm", "executor-pod.yaml", _pod("executor", _root_allowed)),
    case("TML-K010", "gramine", "driver-pod.yaml", _spec("driver", hostNetwork=True)),
    case("TML-K010", "cvm", "executor-pod.yaml", _spec("executor", hostPID=True, hostIPC=True)),
    case("TML-K011", "gramine", "executor-pod.yaml", lambda f: (f / "networkpolicy.yaml").unlink()),
    case(
        "TML-K011", "cvm", "driver-pod.yaml", _policy(lambda s: s.update(policyTypes=["Ingress"]))
    ),
    case("TML-K012", "gramine", "networkpolicy.yaml", _policy(lambda s: s.update(ingress=[{}]))),
    case(
        "TML-K012",
        "cvm",
        "networkpolicy.yaml",
        _policy(lambda s: s["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})),
    ),
    case("TML-K013", "gramine", "executor-pod.yaml", _container("executor", _drop_limit(EPC))),
    case("TML-K013", "gramine", "driver-pod.yaml", _container("driver", _drop_limit(PROVISION))),
    case(
        "TML-K013",
        "cvm",
        "driver-pod.yaml",
        _pod("driver", lambda p: p["spec"].pop("runtimeClassName")),
    ),
    case("TML-K013", "cvm", "executor-pod.yaml", _pod("executor", _drop_label(TEE))),
    case(
        "TML-K014",
        "gramine",
        "driver-pod.yaml",
        _pod("driver", lambda p: p["metadata"]["labels"].update({TEE: "sim"})),
    ),
    case("TML-K015", "gramine", "rbac.yaml", _role(lambda r: r.update(kind="ClusterRole"))),
    case("TML-K015", "gramine", "rbac.yaml", _role(lambda r: r["rules"][0].update(verbs=["*"]))),
    case(
        "TML-K015",
        "cvm",
        "rbac.yaml",
        _role(
            lambda r: r["rules"].append(
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
            )
        ),
    ),
    case("TML-K015", "sim", "rbac.yaml", _yaml("rbac.yaml", _binding_to_cluster_role), "TML-K014"),
    case(
        "TML-K016",
        "gramine",
        "executor-pod.yaml",
        _spec("executor", automountServiceAccountToken=True),
    ),
    case("TML-K017", "gramine", "secrets.yaml", _fill_secret(**{"spark-auth-secret": VALUE})),
    case(
        "TML-K018", "gramine", "driver-pod.yaml", _security("driver", readOnlyRootFilesystem=False)
    ),
    case(
        "TML-C001",
        "gramine",
        "spark.properties",
        _replace("crypto.enabled=true", "crypto.enabled=false"),
    ),
]


@pytest.mark.parametrize("tee", ["gramine", "cvm", "sim"])
def test_project_render_passes(renders: dict[str, Path], tee: str) -> None:
    findings = lint_manifests(renders[tee])
    assert _serious(findings) == [], findings
    # sim: only the notice that the TEE is simulated, on both pod templates (low: exit 0).
    expected = {"driver-pod.yaml", "executor-pod.yaml"} if tee == "sim" else set()
    assert {f.where.split(":")[0] for f in findings} == expected
    assert _ids(findings) <= {"TML-K014"}


@pytest.mark.parametrize(
    ("tee", "extra"),
    [
        ("gramine", {"rpc_tls": True, "enclave_size": "16G", "node_selector": {"pool": "sgx"}}),
        ("cvm", {"runtime_class": "kata-qemu-snp", "rpc_tls": True}),
        ("cvm", {"broker_url": None, "master": "k8s://https://api.example.com:6443"}),
    ],
)
def test_project_render_variants_pass(
    render_for: Render, k8s_app: Path, tee: str, extra: dict[str, Any]
) -> None:
    # Code files named like secrets are code, not secrets; a zip is binaryData.
    helper = k8s_app.parent / "password_utils.py"
    helper.write_text("TOKEN_HEADER = 'x-token'\n")
    deps = k8s_app.parent / "deps.zip"
    deps.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    rendered = render_for(tee, py_files=(helper, deps), **extra)
    assert lint_manifests(rendered.out) == []


@pytest.mark.parametrize(
    ("rule", "tee", "file", "edit", "also"),
    CASES,
    ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)],
)
def test_weak_render_fires_its_rule(
    renders: dict[str, Path],
    tmp_path: Path,
    rule: str,
    tee: str,
    file: str,
    edit: Edit,
    also: frozenset[str],
) -> None:
    folder = _copy(renders, tee, tmp_path)
    edit(folder)
    findings = lint_manifests(folder)
    hits = [f for f in findings if f.id == rule]
    assert hits, findings
    assert any(f.where.startswith(file) for f in hits), hits
    # One weakness, one rule: nothing else (sim's own notice aside) fires.
    assert _ids(findings) - {rule} <= also | ({"TML-K014"} if tee == "sim" else set()), findings
    assert VALUE not in repr(findings)


def test_findings_name_the_object(renders: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(renders, "gramine", tmp_path)
    _security("executor", privileged=True)(folder)
    (hit,) = [f for f in lint_manifests(folder) if f.id == "TML-K008"]
    assert hit.where.startswith("executor-pod.yaml:")
    assert f"Pod/{_app(folder)}-executor" in hit.where
    assert "container spark-executor" in hit.where
    assert "privileged: true" in hit.title


def test_all_weak_folder_fires_every_rule(renders: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(renders, "gramine", tmp_path)
    for rule, tee, _file, edit, _also in CASES:
        # Deleting the policy would hide K012: one edit below weakens it for both.
        if tee == "gramine" and rule not in ("TML-K011", "TML-K012"):
            edit(folder)
    _policy(lambda s: s.update(ingress=[{}], policyTypes=["Ingress"]))(folder)
    findings = lint_manifests(folder)
    assert _ids(findings) >= set(K8S_LINT_RULES), sorted(set(K8S_LINT_RULES) - _ids(findings))
    assert VALUE not in repr(findings)


def test_user_workloads_are_read(tmp_path: Path) -> None:
    """A user's own folder: multi-document YAML, a List, Deployments and CronJobs."""
    pod_spec = {
        "hostNetwork": True,
        "containers": [{"name": "app", "image": "x", "securityContext": {"privileged": True}}],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": pod_spec}},
    }
    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {"jobTemplate": {"spec": {"template": {"spec": pod_spec}}}},
    }
    (tmp_path / "app.yml").write_text(yaml.safe_dump_all([deployment, None, cron]))
    listed = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [dict(deployment, metadata={"name": "api"})],
    }
    (tmp_path / "list.json").write_text(json.dumps(listed))
    (tmp_path / "values.yaml").write_text("replicas: 3\n")  # not an object: skipped
    findings = lint_manifests(tmp_path)
    host = {f.where for f in findings if f.id == "TML-K010"}
    # The line of the pod template's metadata, else of the object; JSON has no lines.
    assert host == {
        "app.yml:8 Deployment/web",
        "app.yml:19 CronJob/nightly",
        "list.json Deployment/api",
    }
    assert {"TML-K008", "TML-K009", "TML-K011", "TML-K013"} <= _ids(findings)


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("bad.yaml", b"kind: Pod\nmetadata: {name: [\n", "bad.yaml:"),
        ("list.yaml", b"kind: Pod\n---\n- a\n- b\n", "list.yaml:3: expected a Kubernetes object"),
        ("bad.json", b'{"kind": "Pod",\n "x": }', "bad.json:2: expected JSON"),
        ("spark-submit.json", b'{"argv": 1}', "spark-submit.json: expected a JSON list"),
        ("latin.yaml", b"kind: \xe9\n", "latin.yaml: expected UTF-8"),
        ("deep.json", b"[" * 200_000 + b"]" * 200_000, "deep.json: expected JSON"),
        ("date.yaml", b"kind: Pod\nwhen: 2024-13-45\n", "date.yaml: expected YAML"),
    ],
)
def test_unreadable_manifest_is_one_error(
    tmp_path: Path, name: str, data: bytes, expected: str
) -> None:
    (tmp_path / name).write_bytes(data)
    with pytest.raises(KubernetesError) as info:
        lint_manifests(tmp_path)
    assert str(info.value).startswith(expected), str(info.value)


def test_huge_file_is_refused_unread(tmp_path: Path) -> None:
    with (tmp_path / "huge.yaml").open("wb") as fh:
        fh.truncate(64 * 1024 * 1024)  # sparse: no time spent writing it
    with pytest.raises(KubernetesError, match=r"^huge.yaml: expected a manifest of at most"):
        lint_manifests(tmp_path)


def test_alias_bomb_is_read_in_linear_time(tmp_path: Path) -> None:
    lines = ["kind: ConfigMap", "metadata: {name: bomb}", "x0: &x0 [a, a, a, a, a, a, a, a, a]"]
    lines += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]" for i in range(1, 10)]
    lines.append("data: {k: *x9}")
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    lint_manifests(tmp_path)
    assert time.perf_counter() - start < 5


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KubernetesError, match="expected a folder of manifests"):
        lint_manifests(tmp_path / "nope")


def test_docs_list_every_rule() -> None:
    doc = (ROOT / "docs" / "doctor.md").read_text()
    for rule in K8S_LINT_RULES.values():
        assert f"| {rule.id} | {rule.severity} | {rule.summary} | {rule.fix} |" in doc, rule.id
