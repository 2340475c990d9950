"""The Kubernetes rules of the security doctor (TML-K001...) and the tests of what
looks like a secret value, shared by the manifest checks."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from trustedml.spark import Finding, LintRule, Severity, is_literal_secret

_AUTH_FIX = (
    "mount this application's own APP-auth Secret (spark.kubernetes.{driver,executor}."
    "secrets.APP-auth=/etc/trustedml/auth) and set spark.authenticate.secret.file="
    "/etc/trustedml/auth/spark-auth-secret; trustedml k8s render does both"
)
_RULES = (
    LintRule(
        "TML-K001",
        Severity.HIGH,
        "secret value on a command line (spark-submit or a container's command/args)",
        "pass secrets through Kubernetes Secrets (secretKeyRef env, secret volumes), "
        "never as arguments",
    ),
    LintRule(
        "TML-K002",
        Severity.HIGH,
        "spark.authenticate.secret set (Spark copies it into the pod specs)",
        "remove spark.authenticate.secret; " + _AUTH_FIX,
    ),
    LintRule(
        "TML-K003",
        Severity.HIGH,
        "secret in a ConfigMap (readable by anyone who may read ConfigMaps)",
        "move the value into a Secret and mount it; ConfigMaps hold only public data",
    ),
    LintRule(
        "TML-K004",
        Severity.HIGH,
        "secret in an env value, a label or an annotation (part of the object, shown by get)",
        "fill the variable from a Secret (valueFrom.secretKeyRef); never put secrets in "
        "metadata; apply Secrets without kubectl's last-applied annotation",
    ),
    LintRule(
        "TML-K005",
        Severity.HIGH,
        "authentication secret not the application's own",
        "give each application its own fresh Secret: " + _AUTH_FIX,
    ),
    LintRule(
        "TML-K006",
        Severity.HIGH,
        "the same secret value in two Secrets",
        "generate a fresh value for each Secret (trustedml k8s render --apply makes a "
        "random auth secret per application)",
    ),
    LintRule(
        "TML-K007",
        Severity.HIGH,
        "no spark.authenticate.secret.file (Spark puts _SPARK_AUTH_SECRET in the "
        "executor pod spec)",
        _AUTH_FIX,
    ),
    LintRule(
        "TML-K008",
        Severity.HIGH,
        "privileged container",
        "set securityContext privileged: false, allowPrivilegeEscalation: false and add "
        "no capabilities (the SGX device plugin's resources need none)",
    ),
    LintRule(
        "TML-K009",
        Severity.HIGH,
        "container may run as root",
        "set securityContext runAsNonRoot: true and runAsUser: 185 (the image's user)",
    ),
    LintRule(
        "TML-K010",
        Severity.HIGH,
        "pod shares a host namespace (hostNetwork, hostPID or hostIPC)",
        "remove hostNetwork, hostPID and hostIPC (or set them false)",
    ),
    LintRule(
        "TML-K011",
        Severity.HIGH,
        "no NetworkPolicy isolates the pods",
        "apply a NetworkPolicy selecting the application's pods with policyTypes "
        "[Ingress, Egress] (trustedml k8s render writes networkpolicy.yaml)",
    ),
    LintRule(
        "TML-K012",
        Severity.HIGH,
        "NetworkPolicy allows all traffic",
        "allow ingress only from the application's own pods and egress only to them, "
        "DNS, the API server, the key broker and the PCCS",
    ),
    LintRule(
        "TML-K013",
        Severity.HIGH,
        "TEE resource missing (the pod would run outside a TEE)",
        "gramine: limits sgx.intel.com/epc, sgx.intel.com/enclave and "
        "sgx.intel.com/provision; cvm: a kata runtimeClassName; label trustedml.io/tee "
        "(trustedml k8s render --tee does all)",
    ),
    LintRule(
        "TML-K014",
        Severity.LOW,
        "simulated TEE: no hardware protection",
        "render with --tee gramine or --tee cvm for production data",
    ),
    LintRule(
        "TML-K015",
        Severity.HIGH,
        "RBAC wider than the driver needs",
        "a namespaced Role with pods, configmaps and services only (no secrets, no '*', "
        "no ClusterRole or ClusterRoleBinding)",
    ),
    LintRule(
        "TML-K016",
        Severity.MEDIUM,
        "executor pods mount a service account token",
        "set automountServiceAccountToken: false on the executor pods or their "
        "ServiceAccount (executors never call the API server)",
    ),
    LintRule(
        "TML-K017",
        Severity.MEDIUM,
        "Secret manifest holds its data (a secret value in a file)",
        "keep Secret data out of files: write shells and fill them at apply "
        "(trustedml k8s render --apply)",
    ),
    LintRule(
        "TML-K018",
        Severity.MEDIUM,
        "container hardening missing",
        "drop ALL capabilities, set seccompProfile RuntimeDefault and "
        "readOnlyRootFilesystem: true (an emptyDir on /tmp)",
    ),
)
K8S_LINT_RULES: Mapping[str, LintRule] = MappingProxyType({rule.id: rule for rule in _RULES})

# Names whose values are secrets, beyond the Spark conf's secret/password/passphrase.
_SECRETISH = re.compile(
    r"(?i)secret|passw(or)?d|passphrase|token|credential|private[-_.]?key|api[-_.]?key"
)
# Names that hold where a secret is, or its name, not the secret itself.
_REFERENCE_NAME = re.compile(r"(?i)(file|path|dir|name|ref)$")
# $(VAR) is Kubernetes' own reference to another variable of the container.
_K8S_REFERENCE = re.compile(r"\$\([A-Za-z_][A-Za-z0-9_]*\)")
_PRIVATE_KEY = re.compile(r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----")
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]{64,}")
# A PKCS#12 PFX: SEQUENCE { INTEGER 3, ContentInfo { OID pkcs7-data ... } }.
_PKCS12_VERSION = b"\x02\x01\x03\x30"
_PKCS7_DATA = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x01"
_JKS_MAGIC = b"\xfe\xed\xfe\xed"
# Shorter values (true, 8080, a name) would match by accident.
MIN_SECRET_LENGTH = 8


def k8s_finding(rule_id: str, title: str, where: str) -> Finding:
    """A finding of Kubernetes rule ``rule_id``: ``title`` says what, ``where`` where."""
    rule = K8S_LINT_RULES[rule_id]
    return Finding(rule.id, rule.severity, f"{rule.summary}: {title}", where, rule.fix)


def secretish_name(name: str) -> bool:
    """Whether ``name`` (a key, an env variable, a flag) says its value is a secret."""
    return bool(_SECRETISH.search(name)) and not _REFERENCE_NAME.search(name.strip())


def literal_secret(name: str, value: str) -> bool:
    """Whether ``name=value`` puts a secret value in plain text: a secret-looking
    ``name`` and a value that is neither empty nor a ``${env:X}`` or ``$(X)`` reference."""
    text = value.strip()
    if not text or _K8S_REFERENCE.fullmatch(text):
        return False
    if is_literal_secret(name, text):
        return True
    return secretish_name(name) and is_literal_secret("secret", text)


def _keystore_bytes(data: bytes) -> str | None:
    if data.startswith(_JKS_MAGIC):
        return "a Java keystore"
    head = data[:64]
    if data[:1] == b"\x30" and _PKCS12_VERSION in head[:12] and _PKCS7_DATA in head:
        return "a PKCS#12 keystore"
    return None


def binary_secret(data: bytes) -> str | None:
    """What secret ``data`` (bytes of a file) holds: a keystore or a PEM private key."""
    found = _keystore_bytes(data)
    if found is None and _PRIVATE_KEY.search(data.decode("latin-1")):
        found = "a PEM private key"
    return found


def text_secret(text: str, known: KnownSecrets) -> str | None:
    """What secret ``text`` holds, if any: a PEM private key, a base64 keystore or a
    value of a Secret in the folder (never the value itself)."""
    if _PRIVATE_KEY.search(text):
        return "a PEM private key"
    for blob in _BASE64.findall(text):
        try:
            decoded = base64.b64decode("".join(blob.split()), validate=True)
        except (binascii.Error, ValueError):
            continue
        found = _keystore_bytes(decoded)
        if found is not None:
            return found + " (base64)"
    return known.found_in(text)


class KnownSecrets:
    """The values of the Secrets in the folder, to find them elsewhere: kept only as
    long as the lint runs, and never shown (a finding names the Secret and key)."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def add(self, value: bytes, source: str) -> None:
        """Remember ``value`` (Secret data) as the value of ``source``."""
        for form in (value.decode("utf-8", "replace"), base64.b64encode(value).decode()):
            if len(form.strip()) >= MIN_SECRET_LENGTH:
                self._values.setdefault(form.strip(), source)

    def found_in(self, text: str) -> str | None:
        """Which Secret's value ``text`` contains, if any."""
        for value, source in self._values.items():
            if value in text:
                return f"the value of {source}"
        return None

    def found_in_any(self, texts: Iterable[str]) -> str | None:
        """:meth:`found_in` over several texts (the first hit)."""
        for text in texts:
            hit = self.found_in(text)
            if hit is not None:
                return hit
        return None
