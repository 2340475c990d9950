"""`trustedml doctor --k8s DIR`: the security lint of a folder of Spark-on-Kubernetes
manifests (a render of `trustedml k8s render`, or a user's own)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import posixpath
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from trustedml.errors import SparkConfigError
from trustedml.k8s._lint_access import lint_network, lint_rbac
from trustedml.k8s._lint_load import (
    ARGV_FILE,
    Folder,
    Manifest,
    as_list,
    as_map,
    as_str,
    read_folder,
)
from trustedml.k8s._lint_pods import AUTH_SECRET_CONF, argv_findings, lint_pods, pod_views
from trustedml.k8s._lint_rules import (
    KnownSecrets,
    binary_secret,
    k8s_finding,
    literal_secret,
    text_secret,
)
from trustedml.k8s._manifests import AUTH_KEY, SIM_KEY, TLS_KEYS
from trustedml.spark import Finding, lint_finding, lint_properties, ordered_findings
from trustedml.spark import parse_properties as _parse_properties

# Spark's K8s properties that name a Secret (and where it goes), not a secret value.
_SECRET_MOUNT = re.compile(r"spark\.kubernetes\.(driver|executor)\.secrets\.(.+)")
_SECRET_KEY_REF = re.compile(r"spark\.kubernetes\.(driver|executor)\.secretKeyRef\..+")
_KEY_REF_VALUE = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?:[-._a-zA-Z0-9]+")
# There is no standalone master (nor its REST port) on Kubernetes.
_NOT_ON_K8S = frozenset({"TML-C005"})
# Every application of one key directory shares its TLS stores and sim key by design.
_SHARED_KEYS = frozenset({*TLS_KEYS, SIM_KEY})
_KEYSTORE_NAMES = (".p12", ".pfx", ".jks", ".keystore", ".key")
_CODE_NAMES = (".py", ".jar", ".zip", ".egg", ".whl")
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_ROLES = ("driver", "executor")


def _reference(key: str, value: str) -> bool:
    if _SECRET_MOUNT.fullmatch(key):
        return value.startswith("/")
    return bool(_SECRET_KEY_REF.fullmatch(key)) and bool(_KEY_REF_VALUE.fullmatch(value))


class _Conf:
    """The application's effective Spark conf: the properties files, then the argv's
    --conf settings (spark-submit lets them win), each value with where it is set."""

    def __init__(self, folder: Folder) -> None:
        self.values: dict[str, tuple[str, str]] = {}
        for name, props in folder.properties.items():
            for prop in props:
                self.values[prop.key] = (prop.value, f"{name}:{prop.line}")
        argv = folder.argv or []
        for i, arg in enumerate(argv):
            if arg in ("--conf", "-c") and i + 1 < len(argv):
                setting = argv[i + 1]
            elif arg.startswith("--conf="):
                setting = arg.removeprefix("--conf=")
            else:
                continue
            key, _, value = setting.partition("=")
            self.values[key] = (value, ARGV_FILE)

    def get(self, key: str) -> str:
        return self.values.get(key, ("", ""))[0].strip()

    def where(self, key: str, default: str) -> str:
        return self.values.get(key, ("", default))[1]


def _properties_findings(folder: Folder, known: KnownSecrets) -> list[Finding]:
    out: list[Finding] = []
    for name, props in folder.properties.items():
        kept = [p for p in props if not _reference(p.key, p.value)]
        out += [f for f in lint_properties(kept, name) if f.id not in _NOT_ON_K8S]
        for prop in kept:
            where = f"{name}:{prop.line}"
            if prop.key == AUTH_SECRET_CONF:
                out.append(k8s_finding("TML-K002", f"{prop.key} in {name}", where))
            elif literal_secret(prop.key, prop.value):
                out.append(lint_finding("TML-C008", f"a literal value of {prop.key}", where))
            if prop.key.endswith("JavaOptions"):
                out += argv_findings([prop.value], where, known)
            hit = text_secret(prop.value, known)
            if hit is not None:
                out.append(lint_finding("TML-C008", f"{hit} in {prop.key}", where))
    return out


def _secret_data(manifest: Manifest) -> Iterator[tuple[str, bytes]]:
    for key, value in as_map(manifest.doc.get("data")).items():
        try:
            yield str(key), base64.b64decode(as_str(value), validate=True)
        except (binascii.Error, ValueError):
            continue  # not base64: the API server would refuse it
    for key, value in as_map(manifest.doc.get("stringData")).items():
        yield str(key), as_str(value).encode("utf-8")


def _secret_objects(folder: Folder, known: KnownSecrets) -> list[Finding]:
    """K017 for Secrets with data; K006 for a value in two Secrets. Fills ``known``."""
    out = []
    holders: dict[str, dict[str, str]] = {}
    for secret in folder.of_kind("Secret"):
        data = list(_secret_data(secret))
        filled = sorted(key for key, value in data if value)
        if filled:
            title = f"Secret {secret.name} keys " + ", ".join(filled)
            out.append(k8s_finding("TML-K017", title, secret.where()))
        for key, value in data:
            known.add(value, f"Secret {secret.name} key {key}")
            if key not in _SHARED_KEYS and value.strip():
                digest = hashlib.sha256(b"trusted-ml doctor\0" + value).hexdigest()
                holders.setdefault(digest, {}).setdefault(secret.name, secret.where(f"key {key}"))
    for places in holders.values():
        if len(places) > 1:
            title = "Secrets " + ", ".join(sorted(places)) + " hold one value"
            out.append(k8s_finding("TML-K006", title, "; ".join(sorted(places.values()))))
    return out


def _configmap_findings(folder: Folder, known: KnownSecrets) -> list[Finding]:
    out = []
    for cmap in folder.of_kind("ConfigMap"):
        entries: list[tuple[str, str, bytes | None]] = [
            (str(k), as_str(v), None) for k, v in as_map(cmap.doc.get("data")).items()
        ]
        for key, value in as_map(cmap.doc.get("binaryData")).items():
            try:
                data = base64.b64decode(as_str(value), validate=True)
            except (binascii.Error, ValueError):
                continue
            entries.append((str(key), data.decode("utf-8", "replace"), data))
        for key, text, raw in entries:
            where = cmap.where(f"key {key}", cmap.doc.get("data"))
            code = key.endswith(_CODE_NAMES)
            hits = []
            if key.endswith(_KEYSTORE_NAMES) or (not code and literal_secret(key, text)):
                hits.append(f"key {key} is named as a secret")
            hit = binary_secret(raw) if raw is not None else None
            hits.append(hit or text_secret(text, known) or "")
            if key.endswith((".properties", ".conf")):
                try:
                    props = _parse_properties(text, key)
                except SparkConfigError:
                    props = ()
                hits += [
                    f"a literal value of {p.key}" for p in props if literal_secret(p.key, p.value)
                ]
            for found in filter(None, hits):
                out.append(k8s_finding("TML-K003", f"{found} (key {key})", where))
    return out


def _metadata_findings(
    where: str, meta: Mapping[str, Any], kind: str, known: KnownSecrets
) -> list[Finding]:
    out = []
    for field, what in (("labels", "label"), ("annotations", "annotation")):
        for key, value in as_map(meta.get(field)).items():
            key, text = str(key), as_str(value)
            if key == _LAST_APPLIED and kind == "Secret":
                try:
                    applied = as_map(json.loads(text))
                except (ValueError, RecursionError):
                    applied = {}
                if as_map(applied.get("data")) or as_map(applied.get("stringData")):
                    title = f"annotation {key} holds the Secret's data"
                    out.append(k8s_finding("TML-K004", title, where))
                continue
            if literal_secret(key, text):
                out.append(k8s_finding("TML-K004", f"{what} {key} is named as a secret", where))
            hit = text_secret(text, known)
            if hit is not None:
                out.append(k8s_finding("TML-K004", f"{hit} in {what} {key}", where))
    return out


def _mounts(folder: Folder, conf: _Conf) -> dict[str, dict[str, str]]:
    """role -> in-pod directory -> the Secret mounted there (conf and pod templates)."""
    mounts: dict[str, dict[str, str]] = {role: {} for role in _ROLES}
    for key in conf.values:
        match = _SECRET_MOUNT.fullmatch(key)
        if match is not None:
            mounts[match.group(1)][posixpath.normpath(conf.get(key))] = match.group(2)
    for pod in pod_views(folder):
        if pod.role in mounts:
            for path, secret in _pod_secret_mounts(pod.spec).items():
                mounts[pod.role].setdefault(path, secret)
    return mounts


def _pod_secret_mounts(spec: Mapping[str, Any]) -> dict[str, str]:
    volumes = {
        as_str(as_map(v).get("name")): as_str(as_map(as_map(v).get("secret")).get("secretName"))
        for v in as_list(spec.get("volumes"))
    }
    out = {}
    for container in as_list(spec.get("containers")):
        for mount in as_list(as_map(container).get("volumeMounts")):
            secret = volumes.get(as_str(as_map(mount).get("name")))
            if secret:
                out[posixpath.normpath(as_str(as_map(mount).get("mountPath")))] = secret
    return out


def _auth_findings(folder: Folder, conf: _Conf, app: str) -> list[Finding]:
    """K007 when the executors get no secret file; K005 when the file is not on this
    application's own Secret, or one auth Secret serves several applications."""
    out = []
    default = next(iter(folder.properties), ARGV_FILE)
    users: dict[str, dict[str, str]] = {}
    if conf.values and conf.get("spark.authenticate").lower() == "true":
        mounts = _mounts(folder, conf)
        for role in _ROLES:
            key = f"spark.authenticate.secret.{role}.file"
            key = key if conf.get(key) else "spark.authenticate.secret.file"
            path, where = conf.get(key), conf.where(key, default)
            if not path:
                if role == "executor":
                    out.append(k8s_finding("TML-K007", f"{key} not set", where))
                continue
            secret = mounts[role].get(posixpath.dirname(posixpath.normpath(path)))
            if secret is None:
                title = f"the {role} reads {path}, on no mounted Secret (an image file is "
                out.append(k8s_finding("TML-K005", title + "every application's)", where))
            elif app and secret != f"{app}-auth":
                title = f"the {role} reads Secret {secret}, not {app}-auth"
                out.append(k8s_finding("TML-K005", title, where))
            if secret and app:
                users.setdefault(secret, {})[app] = where
    for pod in pod_views(folder):
        for secret in _auth_secrets(pod.spec):
            if pod.app and secret != f"{pod.app}-auth":
                title = f"pods of {pod.app} mount Secret {secret}, not {pod.app}-auth"
                out.append(k8s_finding("TML-K005", title, pod.where()))
            if pod.app:
                users.setdefault(secret, {}).setdefault(pod.app, pod.where())
    for secret, apps in users.items():
        if len(apps) > 1:
            title = f"Secret {secret} serves applications " + ", ".join(sorted(apps))
            out.append(k8s_finding("TML-K005", title, "; ".join(sorted(apps.values()))))
    return out


def _auth_secrets(spec: Mapping[str, Any]) -> set[str]:
    """The Spark auth Secrets a pod spec mounts or reads (by name or by key)."""
    found = set()
    for volume in as_list(spec.get("volumes")):
        secret = as_map(as_map(volume).get("secret"))
        name = as_str(secret.get("secretName"))
        keys = {as_str(as_map(i).get("key")) for i in as_list(secret.get("items"))}
        if name.endswith("-auth") or AUTH_KEY in keys:
            found.add(name)
    for container in as_list(spec.get("containers")):
        for entry in as_list(as_map(container).get("env")):
            ref = as_map(as_map(as_map(entry).get("valueFrom")).get("secretKeyRef"))
            if as_str(ref.get("key")) == AUTH_KEY:
                found.add(as_str(ref.get("name")))
    return found


def _app_name(folder: Folder, conf: _Conf) -> str:
    argv = folder.argv or []
    named = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--name"]
    return as_str(folder.summary.get("app")) or (named or [""])[-1] or conf.get("spark.app.name")


def lint_manifests(directory: Path) -> list[Finding]:
    """Lint a folder of Spark-on-Kubernetes manifests: the files of a render
    (render.json, spark.properties, spark-submit.json, pod templates, RBAC,
    NetworkPolicy, ConfigMaps, Secret shells) and any other YAML or JSON manifests in
    it. Returns the findings (rules TML-K001.. and the conf rules over the properties),
    the most severe first; no finding shows a secret value. Raises
    :class:`~trustedml.errors.KubernetesError` naming the file (and line) of anything
    that cannot be read."""
    folder = read_folder(Path(directory))
    known = KnownSecrets()
    conf = _Conf(folder)
    app = _app_name(folder, conf)
    namespace = (
        as_str(folder.summary.get("namespace"))
        or conf.get("spark.kubernetes.namespace")
        or "default"
    )
    pods = pod_views(folder)
    findings = _secret_objects(folder, known)  # first: it learns the Secrets' values
    findings += _properties_findings(folder, known)
    if folder.argv is not None:
        findings += argv_findings(folder.argv, ARGV_FILE, known)
    findings += _auth_findings(folder, conf, app)
    findings += _configmap_findings(folder, known)
    for manifest in folder.manifests:
        findings += _metadata_findings(manifest.where(), manifest.metadata, manifest.kind, known)
    for pod in pods:
        if pod.metadata is not pod.manifest.metadata:
            findings += _metadata_findings(pod.where(), pod.metadata, "Pod", known)
    account = conf.get("spark.kubernetes.authenticate.executor.serviceAccountName") or None
    findings += lint_pods(folder, known, account)
    findings += lint_network(folder, pods, namespace)
    findings += lint_rbac(folder)
    return ordered_findings(findings)
