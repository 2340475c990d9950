"""Applying a rendered application to a cluster with the official Kubernetes client."""

from __future__ import annotations

import base64
import copy
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from trustedml._progress import NoProgress, Progress
from trustedml._secret import Secret
from trustedml.errors import KubernetesError
from trustedml.k8s._manifests import KEYS_ANNOTATION, LABEL_APP

__all__ = ["APPLY_ORDER", "AppliedObject", "ApplyResult", "apply", "delete"]

_log = logging.getLogger(__name__)

# What runs last needs what comes first: the driver's identity and the network fence
# exist before anything that could run, its code and keys last.
APPLY_ORDER = ("ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "ConfigMap", "Secret")

# kind -> (apiVersion, the typed API class, the suffix of its create_/replace_/delete_
# methods). Only namespaced kinds: apply never creates a Namespace or anything
# cluster-scoped.
_KINDS: dict[str, tuple[str, str, str]] = {
    "ServiceAccount": ("v1", "CoreV1Api", "namespaced_service_account"),
    "Role": ("rbac.authorization.k8s.io/v1", "RbacAuthorizationV1Api", "namespaced_role"),
    "RoleBinding": (
        "rbac.authorization.k8s.io/v1",
        "RbacAuthorizationV1Api",
        "namespaced_role_binding",
    ),
    "NetworkPolicy": ("networking.k8s.io/v1", "NetworkingV1Api", "namespaced_network_policy"),
    "ConfigMap": ("v1", "CoreV1Api", "namespaced_config_map"),
    "Secret": ("v1", "CoreV1Api", "namespaced_secret"),
}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# (connect, read) seconds: an unreachable server fails in seconds, not minutes.
_TIMEOUT = (10, 60)
_MAX_SERVER_MESSAGE = 300


class RenderedObjects(Protocol):
    """What apply reads of a render: its objects in apply order, namespace and name."""

    @property
    def name(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    @property
    def objects(self) -> Sequence[Mapping[str, Any]]: ...


SecretData = Mapping[str, Mapping[str, "bytes | Secret"]]
Action = Literal["created", "replaced", "recreated"]


@dataclass(frozen=True)
class AppliedObject:
    """One object apply sent: ``created``, ``replaced`` (PUT over an existing one) or
    ``recreated`` (an immutable ConfigMap or Secret: deleted, then created)."""

    kind: str
    name: str
    action: Action


@dataclass(frozen=True)
class ApplyResult:
    """The objects of application ``name`` in ``namespace``, in the order applied."""

    name: str
    namespace: str
    objects: tuple[AppliedObject, ...]


@dataclass(frozen=True)
class _Planned:
    kind: str
    name: str
    body: dict[str, Any]

    def __repr__(self) -> str:  # the body of a Secret holds its values
        return f"_Planned({self.kind} {self.name})"


def _reveal(value: bytes | Secret) -> bytes:
    return value.reveal() if isinstance(value, Secret) else bytes(value)


def _check_name(what: str, value: str) -> None:
    if not _DNS_LABEL.fullmatch(value) or len(value) > 63:
        # A name also makes the label selector of delete: nothing may widen it.
        raise KubernetesError(f"{what}: expected a DNS-1123 label, got {value!r}")


def _filled_secret(shell: Mapping[str, Any], name: str, bundle: SecretData) -> dict[str, Any]:
    if "data" in shell or "stringData" in shell:
        raise KubernetesError(f"Secret {name}: the render holds data; expected a shell")
    listed = str(shell.get("metadata", {}).get("annotations", {}).get(KEYS_ANNOTATION, ""))
    want = sorted(key for key in listed.split(",") if key)
    have = sorted(bundle.get(name, {}))
    if not want or want != have:
        raise KubernetesError(
            f"Secret {name}: the render lists keys {want}, the secret bundle has {have}; "
            "refusing to apply (render and bundle must come from the same application)"
        )
    body = copy.deepcopy(dict(shell))
    body["data"] = {
        key: base64.b64encode(_reveal(bundle[name][key])).decode("ascii") for key in want
    }
    # A Secret of one application never changes: a new auth secret is a new Secret.
    body["immutable"] = True
    return body


def _plan(rendered: RenderedObjects, bundle: SecretData) -> list[_Planned]:
    """Every request body, checked before the first request: known namespaced kinds
    only, all in the render's namespace and labelled with its name, every Secret's keys
    exactly the bundle's."""
    _check_name("namespace", rendered.namespace)
    _check_name("application name", rendered.name)
    planned: list[_Planned] = []
    shells: set[str] = set()
    for obj in rendered.objects:
        kind = str(obj.get("kind"))
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        if kind not in _KINDS or obj.get("apiVersion") != _KINDS[kind][0]:
            raise KubernetesError(
                f"{kind} {name}: apply creates only {', '.join(APPLY_ORDER)} "
                f"(got apiVersion {obj.get('apiVersion')!r}, kind {kind!r})"
            )
        _check_name(f"{kind} name", name)
        if meta.get("namespace", rendered.namespace) != rendered.namespace:
            raise KubernetesError(
                f"{kind} {name}: expected namespace {rendered.namespace!r}, "
                f"got {meta.get('namespace')!r}"
            )
        if (meta.get("labels") or {}).get(LABEL_APP) != rendered.name:
            raise KubernetesError(
                f"{kind} {name}: expected label {LABEL_APP}={rendered.name} (delete finds "
                "the application's objects by it)"
            )
        if kind == "Secret":
            shells.add(name)
            body = _filled_secret(obj, name, bundle)
        else:
            body = copy.deepcopy(dict(obj))
        body["metadata"] = {**body["metadata"], "namespace": rendered.namespace}
        planned.append(_Planned(kind, name, body))
    extra = sorted(set(bundle) - shells)
    if extra:
        raise KubernetesError(f"the secret bundle has Secrets the render does not: {extra}")
    # Stable: the render's order within a kind.
    return sorted(planned, key=lambda p: APPLY_ORDER.index(p.kind))


def _secret_forms(bundle: SecretData) -> list[str]:
    """Each secret value as text could carry it: raw, hex and base64."""
    forms: list[str] = []
    for data in bundle.values():
        for value in data.values():
            raw = _reveal(value)
            forms += [raw.hex(), base64.b64encode(raw).decode("ascii")]
            forms.append(raw.decode("utf-8", "replace"))
    return [form for form in forms if form]


def _server_message(exc: Any, forms: Sequence[str]) -> str:
    """The ``message`` of the server's Status, unless it echoes a secret value."""
    try:
        status = json.loads(exc.body or "")
        message = str(status.get("message", "")) if isinstance(status, dict) else ""
    except (TypeError, ValueError):
        return ""
    if any(form in message for form in forms):
        return " (the server's message is withheld: it repeats Secret data)"
    if len(message) > _MAX_SERVER_MESSAGE:
        message = message[:_MAX_SERVER_MESSAGE] + "..."
    return f": {message}" if message else ""


def _failure(exc: Exception, doing: str, host: str, forms: Sequence[str]) -> KubernetesError:
    """One KubernetesError for a client failure, naming the request, never its body."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException) and exc.status:
        message = f"Kubernetes refused to {doing}: HTTP {exc.status} {exc.reason}"
        message += _server_message(exc, forms)
        # The exception stays the cause of ours; its body may echo the request (a
        # Secret's data), and str(exc) prints the body: drop it before it travels.
        exc.body = None
        exc.data = None
        return KubernetesError(message)
    reason = getattr(exc, "reason", None) or exc
    return KubernetesError(
        f"could not reach the Kubernetes API server at {host} to {doing}: {reason}"
    )


def _client_errors() -> tuple[type[Exception], ...]:
    import urllib3
    from kubernetes.client.exceptions import ApiException

    return (ApiException, urllib3.exceptions.HTTPError, OSError)


@contextmanager
def _api_client(kubeconfig: Path | None, context: str | None) -> Iterator[Any]:
    """An ApiClient for ``kubeconfig`` (default: $KUBECONFIG or ~/.kube/config)."""
    try:
        import yaml
        from kubernetes import config as kube_config
    except ImportError as exc:
        raise KubernetesError(
            "applying needs the Kubernetes client: pip install 'trusted-ml[k8s]'"
        ) from exc

    where = str(kubeconfig) if kubeconfig is not None else "the default kubeconfig"
    if kubeconfig is not None and not Path(kubeconfig).is_file():
        raise KubernetesError(f"{where}: not a usable kubeconfig: no such file")
    try:
        client = kube_config.new_client_from_config(  # type: ignore[no-untyped-call,unused-ignore]
            config_file=str(kubeconfig) if kubeconfig is not None else None,
            context=context,
            persist_config=False,  # never write the user's kubeconfig back
        )
    except yaml.YAMLError as exc:
        # Only the position: a YAML error may quote the offending line (a token).
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise KubernetesError(f"{where}: not a valid kubeconfig: bad YAML{at}") from exc
    except kube_config.ConfigException as exc:
        detail = str(exc).splitlines()[0][:_MAX_SERVER_MESSAGE] if str(exc) else ""
        raise KubernetesError(f"{where}: not a usable kubeconfig: {detail}") from exc
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise KubernetesError(f"{where}: not a usable kubeconfig ({type(exc).__name__})") from exc
    try:
        yield client
    finally:
        client.close()


def _call(api: Any, method: str, *args: Any, **kwargs: Any) -> None:
    """One request; the response body is read and dropped unparsed (a Secret's echo
    never becomes an object or a log line)."""
    response = getattr(api, method)(
        *args, _preload_content=False, _request_timeout=_TIMEOUT, **kwargs
    )
    for step in ("drain_conn", "release_conn"):
        if callable(getattr(response, step, None)):
            getattr(response, step)()


def _apply_one(apis: Mapping[str, Any], item: _Planned, namespace: str) -> Action:
    """Create ``item``, or replace it when it exists: PUT for most kinds, delete and
    create for an immutable one (the server refuses to change its data)."""
    from kubernetes.client.exceptions import ApiException

    _, api_name, suffix = _KINDS[item.kind]
    api = apis[api_name]
    try:
        _call(api, f"create_{suffix}", namespace, item.body)
        return "created"
    except ApiException as exc:
        if exc.status != 409:
            raise
        exc.body = None
    if item.body.get("immutable"):
        _call(api, f"delete_{suffix}", item.name, namespace)
        _call(api, f"create_{suffix}", namespace, item.body)
        return "recreated"
    _call(api, f"replace_{suffix}", item.name, namespace, item.body)
    return "replaced"


def _typed_apis(client: Any) -> dict[str, Any]:
    from kubernetes import client as k8s_client

    return {name: getattr(k8s_client, name)(client) for name in {k[1] for k in _KINDS.values()}}


def apply(
    rendered: RenderedObjects,
    bundle: SecretData,
    *,
    kubeconfig: Path | None = None,
    context: str | None = None,
    progress: Progress | None = None,
) -> ApplyResult:
    """Create (or replace) the objects of ``rendered`` in its namespace, Secrets filled
    from ``bundle`` (name -> key -> value) in memory: ServiceAccounts, Role,
    RoleBinding, NetworkPolicy, ConfigMaps, then the Secrets (immutable).

    Everything is checked before the first request (kinds, namespace, labels, the
    Secrets' keys against the bundle). The namespace must exist: apply creates nothing
    cluster-scoped. Any failure raises :class:`KubernetesError` naming the object and
    the server's status, never a Secret value; objects applied before it stay (run
    :func:`delete` to remove them).
    """
    planned = _plan(rendered, bundle)
    forms = _secret_forms(bundle)
    progress = progress or NoProgress()
    done: list[AppliedObject] = []
    namespace = rendered.namespace
    with _api_client(kubeconfig, context) as client:
        apis = _typed_apis(client)
        host = str(client.configuration.host)
        for item in planned:
            doing = f"apply {item.kind} {namespace}/{item.name}"
            progress.start(f"{item.kind} {item.name}", None)
            try:
                action = _apply_one(apis, item, namespace)
            except _client_errors() as exc:
                raise _failure(exc, doing, host, forms) from exc
            except ValueError as exc:
                # The typed client validates a body before sending; its message
                # repeats the input (a Secret's data), so only the type is named.
                raise KubernetesError(
                    f"the Kubernetes client refused to {doing}: invalid body ({type(exc).__name__})"
                ) from None
            finally:
                progress.finish()
            _log.info("%s %s %s/%s", action, item.kind, namespace, item.name)
            done.append(AppliedObject(item.kind, item.name, action))
    return ApplyResult(rendered.name, namespace, tuple(done))


def delete(
    name: str,
    namespace: str,
    *,
    kubeconfig: Path | None = None,
    context: str | None = None,
) -> tuple[str, ...]:
    """Delete every object of application ``name`` that apply creates (label
    ``trustedml.io/app=name``; Secrets first), e.g. after its job. Returns the kinds
    deleted; a namespace that does not exist has nothing to delete. Pods are Spark's:
    it deletes its executors, and a finished driver pod stays for its logs."""
    from kubernetes.client.exceptions import ApiException

    _check_name("namespace", namespace)
    _check_name("application name", name)
    selector = f"{LABEL_APP}={name}"
    kinds: list[str] = []
    with _api_client(kubeconfig, context) as client:
        apis = _typed_apis(client)
        host = str(client.configuration.host)
        for kind in reversed(APPLY_ORDER):
            _, api_name, suffix = _KINDS[kind]
            doing = f"delete the {kind}s of {namespace}/{name}"
            try:
                _call(
                    apis[api_name],
                    f"delete_collection_{suffix}",
                    namespace,
                    label_selector=selector,
                )
            except ApiException as exc:
                if exc.status == 404:
                    continue
                raise _failure(exc, doing, host, ()) from exc
            except _client_errors() as exc:
                raise _failure(exc, doing, host, ()) from exc
            _log.info("deleted the %ss of %s/%s", kind, namespace, name)
            kinds.append(kind)
    return tuple(kinds)
