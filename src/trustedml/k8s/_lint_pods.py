"""The doctor's checks of pods (pod templates, Pods and the pods of workloads):
privileges, host namespaces, the TEE, secrets in env and command lines, tokens."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trustedml.k8s._lint_load import Folder, Manifest, as_list, as_map, as_str
from trustedml.k8s._lint_rules import KnownSecrets, k8s_finding, literal_secret, text_secret
from trustedml.k8s._lint_rules import secretish_name as _secretish_name
from trustedml.k8s._manifests import LABEL_APP, LABEL_ROLE, LABEL_TEE, SGX_RESOURCES
from trustedml.spark import Finding

# Where each kind keeps its pod template (metadata + spec); a Pod is its own.
_POD_TEMPLATE = {
    "Pod": (),
    "PodTemplate": ("template",),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
_SPARK_ROLE = "spark-role"
AUTH_SECRET_CONF = "spark.authenticate.secret"  # noqa: S105 (a key name)
_CONF_FLAGS = ("--conf", "-c")


@dataclass(frozen=True)
class PodView:
    """A pod (template) of a manifest: its metadata and spec."""

    manifest: Manifest
    metadata: Mapping[str, Any]
    spec: Mapping[str, Any]

    @property
    def labels(self) -> dict[str, str]:
        return {str(k): as_str(v) for k, v in as_map(self.metadata.get("labels")).items()}

    @property
    def role(self) -> str:
        return self.labels.get(LABEL_ROLE) or self.labels.get(_SPARK_ROLE, "")

    @property
    def app(self) -> str:
        return self.labels.get(LABEL_APP, "")

    def where(self, detail: str = "", at: Any = None) -> str:
        return self.manifest.where(detail, at if at is not None else self.metadata)

    def containers(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """Every container (init and ephemeral too) and its name."""
        for group in ("initContainers", "containers", "ephemeralContainers"):
            for item in as_list(self.spec.get(group)):
                if isinstance(item, Mapping):
                    yield as_str(item.get("name")) or "(unnamed)", item


def pod_views(folder: Folder) -> list[PodView]:
    """The pods of every manifest that has them."""
    views = []
    for manifest in folder.manifests:
        path = _POD_TEMPLATE.get(manifest.kind)
        if path is None:
            continue
        template: Mapping[str, Any] = manifest.doc
        for step in path:
            template = as_map(template.get(step))
        views.append(
            PodView(manifest, as_map(template.get("metadata")), as_map(template.get("spec")))
        )
    return views


def _tokens(argv: Sequence[str]) -> list[str]:
    # `sh -c "spark-submit --conf k=v"` and --driver-java-options "-Dk=v -Dx=y" hold
    # several arguments in one.
    out: list[str] = []
    for arg in argv:
        out.extend(arg.split() if any(ch.isspace() for ch in arg) else [arg])
    return out


def _setting(tokens: Sequence[str], i: int) -> str | None:
    arg = tokens[i]
    if arg in _CONF_FLAGS and i + 1 < len(tokens):
        return tokens[i + 1]
    if arg.startswith("--conf="):
        return arg.removeprefix("--conf=")
    return arg[2:] if arg.startswith("-D") else None


def _flag_value(tokens: Sequence[str], i: int) -> tuple[str, str] | None:
    flag, sep, value = tokens[i][2:].partition("=")
    if not tokens[i].startswith("--") or not _secretish_name(flag):
        return None
    if not sep:
        value = tokens[i + 1] if i + 1 < len(tokens) else ""
        value = "" if value.startswith("-") else value
    return f"--{flag}", value


def argv_findings(argv: Sequence[str], where: str, known: KnownSecrets) -> list[Finding]:
    """K001 for each secret value in ``argv``; K002 for spark.authenticate.secret."""
    out = []
    tokens = _tokens(argv)
    for i, arg in enumerate(tokens):
        setting = _setting(tokens, i)
        flag = _flag_value(tokens, i)
        if setting is not None:
            key, sep, value = setting.partition("=")
            if sep and key.strip() == AUTH_SECRET_CONF:
                out.append(k8s_finding("TML-K002", f"set in argument {i}", where))
            elif sep and literal_secret(key, value):
                out.append(k8s_finding("TML-K001", f"a literal value of {key}", where))
        elif flag is not None and literal_secret(*flag):
            out.append(k8s_finding("TML-K001", f"a literal value of {flag[0]}", where))
        hit = text_secret(arg, known)
        if hit is not None:
            out.append(k8s_finding("TML-K001", f"{hit} in argument {i}", where))
    return out


def _env_findings(pod: PodView, known: KnownSecrets) -> list[Finding]:
    out = []
    for cname, container in pod.containers():
        for entry in as_list(container.get("env")):
            entry = as_map(entry)
            if "value" not in entry:
                continue  # valueFrom: a reference, which is how secrets should come
            name, value = as_str(entry.get("name")), as_str(entry.get("value"))
            where = pod.where(f"container {cname} env {name}", at=entry)
            if literal_secret(name, value):
                out.append(k8s_finding("TML-K004", f"a literal value of env {name}", where))
            hit = text_secret(value, known)
            if hit is not None:
                out.append(k8s_finding("TML-K004", f"{hit} in env {name}", where))
        argv = [as_str(a) for a in as_list(container.get("command"))]
        argv += [as_str(a) for a in as_list(container.get("args"))]
        out += argv_findings(argv, pod.where(f"container {cname} command/args", container), known)
    return out


def _privileges(pod: PodView) -> list[Finding]:
    out = []
    pod_sc = as_map(pod.spec.get("securityContext"))
    for cname, container in pod.containers():
        sc = as_map(container.get("securityContext"))
        caps = as_map(sc.get("capabilities"))
        where = pod.where(f"container {cname}", at=container)
        escalation = []
        if sc.get("privileged") is True:
            escalation.append("privileged: true")
        if sc.get("allowPrivilegeEscalation") is not False:
            escalation.append("allowPrivilegeEscalation not false")
        added = [as_str(c) for c in as_list(caps.get("add"))]
        if added:
            escalation.append("capabilities added: " + ", ".join(added))
        if escalation:
            out.append(k8s_finding("TML-K008", "; ".join(escalation), where))
        user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if user == 0 and not isinstance(user, bool):
            out.append(k8s_finding("TML-K009", "runAsUser: 0", where))
        elif non_root is not True:
            out.append(k8s_finding("TML-K009", "runAsNonRoot not true", where))
        weak = []
        if "ALL" not in [as_str(c).upper() for c in as_list(caps.get("drop"))]:
            weak.append("capabilities not dropped (drop: [ALL])")
        seccomp = as_map(sc.get("seccompProfile") or pod_sc.get("seccompProfile"))
        if as_str(seccomp.get("type")) not in ("RuntimeDefault", "Localhost"):
            weak.append("no seccompProfile RuntimeDefault")
        if sc.get("readOnlyRootFilesystem") is not True:
            weak.append("root file system writable")
        if weak:
            out.append(k8s_finding("TML-K018", "; ".join(weak), where))
    return out


def _host_namespaces(pod: PodView) -> list[Finding]:
    shared = [key for key in ("hostNetwork", "hostPID", "hostIPC") if pod.spec.get(key) is True]
    if not shared:
        return []
    return [k8s_finding("TML-K010", ", ".join(f"{k}: true" for k in shared), pod.where())]


def _positive(value: Any) -> bool:
    text = as_str(value).strip()
    return bool(text) and text.lstrip("0") not in ("", "Gi", "Mi", "Ki", "G", "M", "K")


def _tee(pod: PodView) -> list[Finding]:
    tee = pod.labels.get(LABEL_TEE)
    if tee is None:
        return [k8s_finding("TML-K013", f"no {LABEL_TEE} label", pod.where())]
    if tee == "sim":
        return [k8s_finding("TML-K014", f"{LABEL_TEE}: sim", pod.where())]
    if tee == "cvm":
        if as_str(pod.spec.get("runtimeClassName")).strip():
            return []
        return [k8s_finding("TML-K013", "tee cvm without a runtimeClassName", pod.where())]
    if tee != "gramine":
        return [k8s_finding("TML-K013", f"unknown {LABEL_TEE}: {tee}", pod.where())]
    out = []
    # Init containers run before the enclave and need no SGX resources.
    for item in as_list(pod.spec.get("containers")):
        limits = as_map(as_map(as_map(item).get("resources")).get("limits"))
        missing = [r for r in SGX_RESOURCES if not _positive(limits.get(r))]
        if missing:
            cname = as_str(as_map(item).get("name")) or "(unnamed)"
            title = f"tee gramine, container {cname} without limits " + ", ".join(missing)
            out.append(k8s_finding("TML-K013", title, pod.where(f"container {cname}", item)))
    return out


def _token(pod: PodView, folder: Folder, executor_account: str | None) -> list[Finding]:
    if pod.role != "executor" or pod.spec.get("automountServiceAccountToken") is False:
        return []
    if pod.spec.get("automountServiceAccountToken") is not True:
        # Spark sets the executors' account from its conf, over the template's.
        account = executor_account or as_str(pod.spec.get("serviceAccountName")) or "default"
        for sa in folder.of_kind("ServiceAccount"):
            if sa.name == account and sa.doc.get("automountServiceAccountToken") is False:
                return []
    return [k8s_finding("TML-K016", "automountServiceAccountToken not false", pod.where())]


def lint_pods(folder: Folder, known: KnownSecrets, executor_account: str | None) -> list[Finding]:
    """The findings of every pod in ``folder`` (K001, K004, K008-K010, K013, K014,
    K016, K018); ``executor_account`` is the executors' ServiceAccount from the conf."""
    out: list[Finding] = []
    for pod in pod_views(folder):
        out += _host_namespaces(pod) + _tee(pod) + _privileges(pod)
        out += _env_findings(pod, known) + _token(pod, folder, executor_account)
    return out
