"""The doctor's checks of who may reach the application: its NetworkPolicies (K011,
K012) and its RBAC (K015)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trustedml.k8s._lint_load import Folder, Manifest, as_list, as_map, as_str
from trustedml.k8s._lint_pods import PodView
from trustedml.k8s._lint_rules import k8s_finding
from trustedml.spark import Finding

_OPEN_CIDRS = frozenset({"0.0.0.0/0", "::/0"})
_DIRECTIONS = (("Ingress", "ingress", "from", "source"), ("Egress", "egress", "to", "destination"))
# Sub-resources that reach into the TEE pods or mint credentials.
_RISKY_RESOURCES = (
    "secrets",
    "pods/exec",
    "pods/attach",
    "pods/portforward",
    "serviceaccounts/token",
)
_RISKY_VERBS = ("escalate", "bind", "impersonate")


def _strings(value: Any) -> list[str]:
    return [as_str(v) for v in as_list(value)]


def _empty_selector(selector: Any) -> bool:
    sel = as_map(selector)
    return not as_map(sel.get("matchLabels")) and not as_list(sel.get("matchExpressions"))


def _matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key = as_str(expression.get("key"))
    values = _strings(expression.get("values"))
    present = key in labels
    return {
        "In": present and labels.get(key) in values,
        "NotIn": not (present and labels.get(key) in values),
        "Exists": present,
        "DoesNotExist": not present,
    }.get(as_str(expression.get("operator")), False)


def selects(selector: Any, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects ``labels``."""
    sel = as_map(selector)
    if any(labels.get(str(k)) != as_str(v) for k, v in as_map(sel.get("matchLabels")).items()):
        return False
    return all(_matches(as_map(e), labels) for e in as_list(sel.get("matchExpressions")))


def _policy_types(spec: Mapping[str, Any]) -> set[str]:
    types = set(_strings(spec.get("policyTypes")))
    if types:
        return types
    # The API server's default: Ingress always, Egress when egress rules are given.
    return {"Ingress"} | ({"Egress"} if "egress" in spec else set())


def _open_peer(peer: Any) -> bool:
    peer = as_map(peer)
    block = as_map(peer.get("ipBlock"))
    if block:
        return as_str(block.get("cidr")) in _OPEN_CIDRS and not as_list(block.get("except"))
    # {namespaceSelector: {}} alone is every pod of every namespace.
    return (
        "namespaceSelector" in peer
        and _empty_selector(peer.get("namespaceSelector"))
        and (_empty_selector(peer.get("podSelector")))
    )


def _open_rule(rule: Any, peers_key: str) -> bool:
    rule = as_map(rule)
    peers = as_list(rule.get(peers_key))
    return (not peers or any(_open_peer(p) for p in peers)) and not as_list(rule.get("ports"))


def _policy_findings(policy: Manifest) -> list[Finding]:
    out = []
    spec = as_map(policy.doc.get("spec"))
    types = _policy_types(spec)
    for policy_type, key, peers_key, what in _DIRECTIONS:
        if policy_type not in types:
            continue
        for i, rule in enumerate(as_list(spec.get(key))):
            if _open_rule(rule, peers_key):
                title = f"{key} rule {i} allows every {what} on every port"
                out.append(k8s_finding("TML-K012", title, policy.where(f"{key} rule {i}", rule)))
    return out


def lint_network(folder: Folder, pods: Sequence[PodView], namespace: str) -> list[Finding]:
    """K011 for each pod whose ingress or egress no NetworkPolicy restricts; K012 for
    each policy rule open to everyone. ``namespace`` is where unnamespaced objects go."""
    policies = list(folder.of_kind("NetworkPolicy"))
    out: list[Finding] = []
    for policy in policies:
        out += _policy_findings(policy)
    for pod in pods:
        where = pod.manifest.namespace(namespace)
        isolated: set[str] = set()
        for policy in policies:
            spec = as_map(policy.doc.get("spec"))
            if policy.namespace(namespace) == where and selects(
                spec.get("podSelector"), pod.labels
            ):
                isolated |= _policy_types(spec)
        missing = [t.lower() for t in ("Ingress", "Egress") if t not in isolated]
        if missing:
            title = " and ".join(missing) + " of the pod not restricted"
            if not policies:
                title = "no NetworkPolicy in the folder"
            out.append(k8s_finding("TML-K011", title, pod.where()))
    return out


def _rule_reasons(rule: Mapping[str, Any]) -> list[str]:
    verbs, resources = _strings(rule.get("verbs")), _strings(rule.get("resources"))
    reasons = [
        f"{field} *"
        for field in ("verbs", "resources", "apiGroups")
        if "*" in _strings(rule.get(field))
    ]
    reasons += [f"{r} access" for r in _RISKY_RESOURCES if r in resources]
    reasons += [f"verb {v}" for v in _RISKY_VERBS if v in verbs]
    if as_list(rule.get("nonResourceURLs")):
        reasons.append("nonResourceURLs")
    return reasons


def lint_rbac(folder: Folder) -> list[Finding]:
    """K015 for cluster-wide roles and bindings and for rules wider than Spark's
    driver needs (wildcards, Secrets, exec into pods, escalation)."""
    out = []
    for manifest in folder.of_kind("ClusterRole", "ClusterRoleBinding"):
        title = f"a {manifest.kind} (rights in every namespace)"
        out.append(k8s_finding("TML-K015", title, manifest.where()))
    for manifest in folder.of_kind("Role", "ClusterRole"):
        for i, rule in enumerate(as_list(manifest.doc.get("rules"))):
            reasons = _rule_reasons(as_map(rule))
            if reasons:
                title = f"{manifest.kind} {manifest.name} rule {i}: " + ", ".join(reasons)
                out.append(k8s_finding("TML-K015", title, manifest.where(f"rule {i}", rule)))
    for manifest in folder.of_kind("RoleBinding"):
        ref = as_map(manifest.doc.get("roleRef"))
        if as_str(ref.get("kind")) == "ClusterRole":
            title = f"binds ClusterRole {as_str(ref.get('name'))} (its rules may be any width)"
            out.append(k8s_finding("TML-K015", title, manifest.where()))
    return out
