"""The Kubernetes objects of one trusted Spark application, as plain manifest dicts."""

from __future__ import annotations

import base64
from typing import Any

from trustedml.k8s._options import KubernetesOptions, host_is_ip

__all__ = [
    "APP_DIR",
    "AUTH_DIR",
    "AUTH_KEY",
    "CONTAINER",
    "LABEL_APP",
    "LABEL_ROLE",
    "LABEL_TEE",
    "SGX_RESOURCES",
    "SIM_DIR",
    "SIM_KEY",
    "TLS_DIR",
    "TLS_KEYS",
    "TRUST_DIR",
    "WARNING_ANNOTATION",
    "config_maps",
    "labels",
    "network_policy",
    "pod_template",
    "rbac",
    "secret_shells",
]

LABEL_APP = "trustedml.io/app"
LABEL_TEE = "trustedml.io/tee"
LABEL_ROLE = "trustedml.io/role"
WARNING_ANNOTATION = "trustedml.io/warning"
KEYS_ANNOTATION = "trustedml.io/keys"
FILL_ANNOTATION = "trustedml.io/fill"
CONTAINER = {"driver": "spark-driver", "executor": "spark-executor"}

APP_DIR = "/opt/trustedml/app"
TRUST_DIR = "/etc/trustedml/trust"
AUTH_DIR = "/etc/trustedml/auth"
TLS_DIR = "/etc/trustedml/tls"
SIM_DIR = "/etc/trustedml/sim"
AUTH_KEY = "spark-auth-secret"
SIM_KEY = "sim-key.pem"
TLS_KEYS = ("keystore.p12", "truststore.p12", "keystore-password", "truststore-password")
# Spark's image convention: a fixed non-root user.
SPARK_UID = 185
# The SGX device plugin's resources an enclave pod needs: EPC, /dev/sgx_enclave, and
# /dev/sgx_provision for DCAP quotes.
SGX_RESOURCES = ("sgx.intel.com/epc", "sgx.intel.com/enclave", "sgx.intel.com/provision")
_AESMD = "/var/run/aesmd"
_SGX_NODE_LABEL = "intel.feature.node.kubernetes.io/sgx"
_KATA_NODE_LABEL = "katacontainers.io/kata-runtime"
_SIM_WARNING = "SIMULATED TEE: no hardware protection"


def labels(options: KubernetesOptions) -> dict[str, str]:
    """The labels every object of the application carries."""
    return {
        "app.kubernetes.io/name": "trusted-ml",
        "app.kubernetes.io/instance": options.app_name,
        "app.kubernetes.io/managed-by": "trustedml",
        LABEL_APP: options.app_name,
    }


def _meta(options: KubernetesOptions, name: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": options.namespace,
        "labels": labels(options),
    }
    meta.update(extra)
    return meta


def rbac(options: KubernetesOptions) -> list[dict[str, Any]]:
    """Two ServiceAccounts, and the driver's namespaced Role and RoleBinding: what
    Spark's driver needs to run its executors (pods, and the ConfigMap of their conf),
    nothing else: no Secrets, no cluster scope. Executors get no API access at all."""
    app = options.app_name
    driver = f"{app}-driver"
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(options, driver),
            "automountServiceAccountToken": True,
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(options, f"{app}-executor"),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(options, driver),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods"],
                    "verbs": [
                        "get",
                        "list",
                        "watch",
                        "create",
                        "delete",
                        "deletecollection",
                        "patch",
                    ],
                },
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "verbs": ["get", "list", "create", "delete", "deletecollection"],
                },
                {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(options, driver),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": driver},
            "subjects": [
                {"kind": "ServiceAccount", "name": driver, "namespace": options.namespace}
            ],
        },
    ]


def _to(host: str, ports: list[tuple[str, int]]) -> dict[str, Any]:
    rule: dict[str, Any] = {"ports": [{"protocol": proto, "port": port} for proto, port in ports]}
    if host_is_ip(host):
        suffix = "/128" if ":" in host else "/32"
        rule["to"] = [{"ipBlock": {"cidr": host + suffix}}]
    return rule


def network_policy(options: KubernetesOptions) -> dict[str, Any]:
    """Only the application's own pods talk to each other (driver and executors, every
    port: RPC, block transfers, the UI's TLS port); out of them only DNS, the API server
    (the driver runs the executors), the key broker and, for gramine, the PCCS."""
    app = options.app_name
    own = {"podSelector": {"matchLabels": {LABEL_APP: app}}}
    api_host, api_port = options.api_server
    api_ports = [("TCP", api_port)] if host_is_ip(api_host) else [("TCP", 443), ("TCP", 6443)]
    egress: list[dict[str, Any]] = [
        {"to": [own]},
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        _to(api_host, sorted(set(api_ports))),
    ]
    for endpoint in (options.broker_endpoint, options.pccs_endpoint):
        if endpoint is not None:
            egress.append(_to(endpoint[0], [("TCP", endpoint[1])]))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(options, app),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_APP: app}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [own]}],
            "egress": egress,
        },
    }


def secret_names(options: KubernetesOptions) -> dict[str, tuple[str, ...]]:
    """The application's Secrets and the keys each holds (filled in at apply)."""
    app = options.app_name
    names = {f"{app}-auth": (AUTH_KEY,), f"{app}-tls": TLS_KEYS}
    if options.tee == "sim":
        names[f"{app}-sim"] = (SIM_KEY,)
    return names


def secret_shells(options: KubernetesOptions) -> list[dict[str, Any]]:
    """The Secrets with no data: what a render writes. ``apply`` fills them in memory,
    so no secret value is ever in a file of the render."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": _meta(
                options,
                name,
                annotations={KEYS_ANNOTATION: ",".join(keys), FILL_ANNOTATION: "apply"},
            ),
        }
        for name, keys in secret_names(options).items()
    ]


def _qcnl_conf(options: KubernetesOptions) -> str:
    # The DCAP quote provider library's configuration (JSON): where collateral comes from.
    url = (options.pccs_url or "https://localhost:8081").rstrip("/") + "/sgx/certification/v4/"
    return '{\n  "pccs_url": "' + url + '",\n  "use_secure_cert": true\n}\n'


def config_maps(
    options: KubernetesOptions, code: dict[str, bytes], trust: dict[str, str]
) -> list[dict[str, Any]]:
    """``APP-code`` (the application's files: measured code, not secret; a .zip as
    binaryData) and ``APP-trust`` (CA certificates and, for gramine, the quote
    provider's conf)."""
    app = options.app_name
    trust = dict(trust)
    if options.tee == "gramine":
        trust["sgx_default_qcnl.conf"] = _qcnl_conf(options)
    text: dict[str, str] = {}
    binary: dict[str, str] = {}
    for name, data in sorted(code.items()):
        try:
            text[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            binary[name] = base64.b64encode(data).decode("ascii")
    code_map: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(options, f"{app}-code"),
        "data": text,
        "immutable": True,
    }
    if binary:
        code_map["binaryData"] = binary
    return [
        code_map,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(options, f"{app}-trust"),
            "data": dict(sorted(trust.items())),
            "immutable": True,
        },
    ]


def _env(options: KubernetesOptions) -> list[dict[str, Any]]:
    # HOME: the root file system is read-only; Python and the JVM write under it.
    env = [{"name": "TRUSTEDML_TEE", "value": options.tee}, {"name": "HOME", "value": "/tmp"}]  # noqa: S108
    if options.broker_url is not None:
        env.append({"name": "TRUSTEDML_BROKER_URL", "value": options.broker_url})
        env.append({"name": "TRUSTEDML_BROKER_CA", "value": f"{TRUST_DIR}/broker-ca.pem"})
    if options.tee == "sim":
        env.append({"name": "TRUSTEDML_SIM_KEY", "value": f"{SIM_DIR}/{SIM_KEY}"})
    if options.tee == "gramine":
        env.append({"name": "SGX_AESM_ADDR", "value": "1"})
        env.append({"name": "QCNL_CONF_PATH", "value": f"{TRUST_DIR}/sgx_default_qcnl.conf"})
        if options.pccs_url is not None:
            env.append({"name": "PCCS_URL", "value": options.pccs_url})
    return env


def pod_template(options: KubernetesOptions, role: str) -> dict[str, Any]:
    """The pod template of the driver or the executors (Spark merges its own parts
    in): the TEE of ``options.tee``, a locked-down container, the code and trust
    ConfigMaps. The Secrets are mounted by Spark's own conf, not here."""
    app = options.app_name
    tee = options.tee
    container: dict[str, Any] = {
        "name": CONTAINER[role],
        "image": options.container_image,
        "env": _env(options),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": SPARK_UID,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "app-code", "mountPath": APP_DIR, "readOnly": True},
            {"name": "trust", "mountPath": TRUST_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 (an emptyDir in the pod)
        ],
    }
    volumes: list[dict[str, Any]] = [
        {"name": "app-code", "configMap": {"name": f"{app}-code"}},
        {"name": "trust", "configMap": {"name": f"{app}-trust"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    spec: dict[str, Any] = {
        "serviceAccountName": f"{app}-{role}",
        "automountServiceAccountToken": role == "driver",
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SPARK_UID,
            "runAsGroup": SPARK_UID,
            "fsGroup": SPARK_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    node_selector: dict[str, str] = {}
    if tee == "gramine":
        epc, enclave, provision = SGX_RESOURCES
        sgx = {epc: options.epc, enclave: "1", provision: "1"}
        container["resources"] = {"limits": dict(sgx), "requests": dict(sgx)}
        container["volumeMounts"].append({"name": "aesmd", "mountPath": _AESMD})
        volumes.append({"name": "aesmd", "hostPath": {"path": _AESMD, "type": "Directory"}})
        node_selector[_SGX_NODE_LABEL] = "true"
    elif tee == "cvm":
        spec["runtimeClassName"] = options.cvm_runtime_class
        node_selector[_KATA_NODE_LABEL] = "true"
    node_selector.update(options.node_selector)
    if node_selector:
        spec["nodeSelector"] = node_selector
    if options.tolerations:
        spec["tolerations"] = [t.manifest() for t in options.tolerations]
    pod_labels = labels(options) | {LABEL_TEE: tee, LABEL_ROLE: role}
    # Spark names the pods itself; the name makes the template a valid Pod on its own.
    metadata: dict[str, Any] = {
        "name": f"{app}-{role}-template",
        "namespace": options.namespace,
        "labels": pod_labels,
    }
    if tee == "sim":
        metadata["annotations"] = {WARNING_ANNOTATION: _SIM_WARNING}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
