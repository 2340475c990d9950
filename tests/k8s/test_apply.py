"""Applying a render with the official Kubernetes client, against a stand-in API server
(tests/k8s/standin.py: it records every request; the kubeconfig is a real file the
client loads, with a bearer token the server checks).
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.conftest import PASSPHRASE
from tests.k8s.conftest import Render
from tests.k8s.standin import KIND_OF, PLURALS, StandIn, free_port, serve
from tests.k8s.standin import kubeconfig as make_kubeconfig
from tests.secret_scan import hits
from trustedml import KeyDirectory, Secret
from trustedml.errors import KubernetesError
from trustedml.k8s import RenderedApp, SecretBundle, secret_bundle
from trustedml.k8s._apply import APPLY_ORDER, apply, delete

App = tuple[RenderedApp, SecretBundle]


@pytest.fixture(scope="module")
def server() -> Iterator[StandIn]:
    with serve() as state:
        yield state


@pytest.fixture
def api(server: StandIn) -> StandIn:
    server.reset()
    return server


@pytest.fixture
def kubeconfig(tmp_path: Path, api: StandIn) -> Path:
    return make_kubeconfig(tmp_path / "kubeconfig", api.url)


@dataclass
class Recorder:
    """A Progress that records its calls."""

    events: list[str] = field(default_factory=list)

    def start(self, description: str, total: int | None) -> None:
        self.events.append(f"start {description}")

    def advance(self, amount: int) -> None:
        self.events.append(f"advance {amount}")

    def finish(self) -> None:
        self.events.append("finish")


@dataclass(frozen=True)
class Rendered:
    """What apply reads of a render (for renders a test alters)."""

    name: str
    namespace: str
    objects: tuple[dict[str, Any], ...]


@pytest.fixture
def app(render_for: Render, session_keys: KeyDirectory, tmp_path: Path) -> App:
    """A fresh render for --tee sim (three Secrets) and its Secrets' data."""
    sim_key = tmp_path / "sim-key.pem"  # created by the bundle
    rendered = render_for("sim")
    return rendered, secret_bundle(rendered, session_keys, Secret(PASSPHRASE), sim_key=sim_key)


def _values(bundle: SecretBundle) -> dict[str, bytes]:
    return {f"{name}/{key}": value.reveal() for name, data in bundle.items()
            for key, value in data.items()}  # fmt: skip


def _assert_clean(texts: dict[str, str | bytes], bundle: SecretBundle) -> None:
    blobs = {where: t.encode() if isinstance(t, str) else t for where, t in texts.items()}
    assert hits(blobs, _values(bundle)) == []


def test_apply_creates_every_object_in_order_with_secrets_from_the_bundle(
    app: App, api: StandIn, kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rendered, bundle = app
    caplog.set_level(logging.DEBUG)

    progress = Recorder()
    result = apply(rendered, bundle, kubeconfig=kubeconfig, progress=progress)

    plurals = [r.path.split("/")[-1] for r in api.requests]
    assert progress.events == [
        e
        for o in rendered.objects
        for e in (f"start {o['kind']} {o['metadata']['name']}", "finish")
    ]
    assert [r.method for r in api.requests] == ["POST"] * len(rendered.objects)
    assert [KIND_OF[p] for p in plurals] == [
        "ServiceAccount", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy",
        "ConfigMap", "ConfigMap", "Secret", "Secret", "Secret",
    ]  # fmt: skip
    for request, plural in zip(api.requests, plurals, strict=True):
        assert request.path == f"{PLURALS[plural]}/namespaces/ml-jobs/{plural}"
    assert [(o.kind, o.name, o.action) for o in result.objects] == [
        (obj["kind"], obj["metadata"]["name"], "created") for obj in rendered.objects
    ]
    # The server got the render's objects; the Secrets filled from the bundle, immutable.
    for request, obj in zip(api.requests, rendered.objects, strict=True):
        got = dict(request.body or {})
        if obj["kind"] == "Secret":
            data = {k: base64.b64decode(v) for k, v in got.pop("data").items()}
            wanted = bundle[obj["metadata"]["name"]]
            assert data == {k: v.reveal() for k, v in wanted.items()}
            # What the server got is a valid Secret (data and immutable included).
            kubernetes_validate.validate(request.body, "1.30.0", strict=True)
            assert got.pop("immutable") is True
        assert got == obj
    # No secret value outside the Secrets' own requests, nor in the logs.
    plain = {f"{r.method} {r.path}": r.raw for r in api.requests if "/secrets" not in r.path}
    _assert_clean({**plain, "log": caplog.text, "result": repr(result)}, bundle)
    assert f"created Secret ml-jobs/{rendered.name}-auth" in caplog.text


def test_a_second_apply_replaces_and_recreates_the_immutable_objects(
    app: App, api: StandIn, kubeconfig: Path
) -> None:
    rendered, bundle = app
    apply(rendered, bundle, kubeconfig=kubeconfig)
    api.requests.clear()
    # New data (a fresh auth secret): the server refuses to change an immutable Secret.
    fresh = {name: {k: Secret(secrets.token_bytes(16)) for k in data}
             for name, data in bundle.items()}  # fmt: skip

    result = apply(rendered, fresh, kubeconfig=kubeconfig)

    actions = {(o.kind, o.name): o.action for o in result.objects}
    assert actions == {
        (obj["kind"], obj["metadata"]["name"]): "recreated"
        if obj["kind"] in ("ConfigMap", "Secret") else "replaced"
        for obj in rendered.objects
    }  # fmt: skip
    methods = [(r.method, r.path.rsplit("/", 2)[-2]) for r in api.requests if r.method != "POST"]
    assert ("PUT", "roles") in methods
    assert ("DELETE", "secrets") in methods
    assert ("PUT", "secrets") not in methods
    stored = api.objects[("ml-jobs", "secrets", f"{rendered.name}-auth")]
    assert base64.b64decode(stored["data"]["spark-auth-secret"]) == (
        fresh[f"{rendered.name}-auth"]["spark-auth-secret"].reveal()
    )


def test_a_refusal_names_the_object_and_status_but_no_secret_data(
    app: App, api: StandIn, kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rendered, bundle = app
    api.forbidden.add(("secrets", f"{rendered.name}-tls"))
    caplog.set_level(logging.DEBUG)

    with pytest.raises(KubernetesError) as caught:
        apply(rendered, bundle, kubeconfig=kubeconfig)

    message = str(caught.value)
    assert f"apply Secret ml-jobs/{rendered.name}-tls: HTTP 403 Forbidden" in message
    assert "withheld" in message  # the server's message repeated the request
    # The server did get the data (the refusal echoes it): the scan can find it.
    assert hits({"403": api.requests[-1].raw}, _values(bundle))
    chain = "".join(traceback.format_exception(caught.value))
    _assert_clean(
        {"message": message, "repr": repr(caught.value), "traceback": chain, "log": caplog.text},
        bundle,
    )


def test_a_body_the_client_rejects_is_named_without_its_data(
    app: App, api: StandIn, kubeconfig: Path
) -> None:
    rendered, bundle = app
    # The client validates a body before sending it; its own message would repeat it.
    odd = tuple({**o, "type": 5} if o["kind"] == "Secret" else o for o in rendered.objects)
    with pytest.raises(
        KubernetesError, match=r"refused to apply Secret .*: invalid body"
    ) as caught:
        apply(Rendered(rendered.name, "ml-jobs", odd), bundle, kubeconfig=kubeconfig)
    assert not any("/secrets" in r.path for r in api.requests)
    chain = "".join(traceback.format_exception(caught.value))
    _assert_clean({"traceback": chain}, bundle)


def test_a_refusal_of_a_plain_object_carries_the_servers_message(
    app: App, api: StandIn, kubeconfig: Path
) -> None:
    rendered, bundle = app
    api.forbidden.add(("roles", f"{rendered.name}-driver"))

    with pytest.raises(
        KubernetesError, match=r"apply Role ml-jobs/\S+-driver: HTTP 403 Forbidden: .*cannot post"
    ):
        apply(rendered, bundle, kubeconfig=kubeconfig)
    # Nothing after the refused object was sent: no Secret reached the server.
    assert [r.path.split("/")[-1] for r in api.requests] == ["serviceaccounts"] * 2 + ["roles"]


def test_a_secret_whose_keys_differ_from_the_bundle_is_refused_before_any_request(
    app: App, api: StandIn, kubeconfig: Path
) -> None:
    rendered, bundle = app
    tls = f"{rendered.name}-tls"
    short = {**bundle, tls: {k: v for k, v in bundle[tls].items() if k != "truststore.p12"}}
    with pytest.raises(KubernetesError, match=rf"Secret {tls}: the render lists keys"):
        apply(rendered, short, kubeconfig=kubeconfig)
    more = {**bundle, "other": {"k": Secret(b"v" * 16)}}
    with pytest.raises(KubernetesError, match="bundle has Secrets the render does not"):
        apply(rendered, more, kubeconfig=kubeconfig)
    filled = [{**o, "data": {"k": "dg=="}} if o["kind"] == "Secret" else o
              for o in rendered.objects]  # fmt: skip
    with pytest.raises(KubernetesError, match="the render holds data; expected a shell"):
        apply(Rendered(rendered.name, "ml-jobs", tuple(filled)), bundle, kubeconfig=kubeconfig)
    assert api.requests == []


def test_objects_apply_must_not_create_are_refused_before_any_request(
    app: App, api: StandIn, kubeconfig: Path
) -> None:
    rendered, _ = app
    role = rendered.of_kind("Role")[0]
    bad_objects = {
        "apply creates only": {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}},
        "kind 'ClusterRole'": {**role, "kind": "ClusterRole"},
        "expected namespace 'ml-jobs'": {
            **role,
            "metadata": {**role["metadata"], "namespace": "kube-system"},
        },
        "expected label trustedml.io/app": {**role, "metadata": {"name": role["metadata"]["name"]}},
        "kind 'Pod'": rendered.driver_template,
    }
    for expected, bad in bad_objects.items():
        with pytest.raises(KubernetesError, match=re.escape(expected)):
            apply(Rendered(rendered.name, "ml-jobs", (bad,)), {}, kubeconfig=kubeconfig)
    assert api.requests == []


def test_a_malformed_kubeconfig_is_one_clear_error(app: App, tmp_path: Path) -> None:
    rendered, bundle = app
    bad = tmp_path / "bad"
    bad.write_text("users:\n- user:\n    token: hunter2-token: x\n")
    with pytest.raises(
        KubernetesError, match=r"bad: not a valid kubeconfig: bad YAML \(line"
    ) as caught:
        apply(rendered, bundle, kubeconfig=bad)
    assert "hunter2" not in "".join(traceback.format_exception(caught.value))
    empty = tmp_path / "empty"
    empty.write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(KubernetesError, match="empty: not a usable kubeconfig"):
        apply(rendered, bundle, kubeconfig=empty)
    with pytest.raises(KubernetesError, match="missing: not a usable kubeconfig: no such file"):
        delete(rendered.name, "ml-jobs", kubeconfig=tmp_path / "missing")


def test_the_context_chooses_the_cluster(app: App, api: StandIn, kubeconfig: Path) -> None:
    rendered, bundle = app
    with pytest.raises(KubernetesError, match=r"not a usable kubeconfig: .*nowhere"):
        apply(rendered, bundle, kubeconfig=kubeconfig, context="nowhere")
    with pytest.raises(KubernetesError, match=r"could not reach .* at http://127\.0\.0\.1:9 "):
        delete(rendered.name, "ml-jobs", kubeconfig=kubeconfig, context="elsewhere")
    assert api.requests == []
    assert delete(rendered.name, "ml-jobs", kubeconfig=kubeconfig, context="standin")
    assert len(api.requests) == len(APPLY_ORDER)


def test_an_unreachable_server_is_one_clear_error(app: App, tmp_path: Path) -> None:
    rendered, bundle = app
    port = free_port()
    kubeconfig = make_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")
    with pytest.raises(
        KubernetesError,
        match=rf"could not reach the Kubernetes API server at http://127.0.0.1:{port} "
        r"to apply ServiceAccount ml-jobs/",
    ):
        apply(rendered, bundle, kubeconfig=kubeconfig)


def test_delete_removes_the_applications_objects_by_label(
    app: App, render_for: Render, api: StandIn, kubeconfig: Path
) -> None:
    rendered, bundle = app
    other = render_for("cvm")
    apply(rendered, bundle, kubeconfig=kubeconfig)
    stand_in_bundle = {name: {k: Secret(b"x" * 16) for k in keys}
                       for name, keys in other.secrets.items()}  # fmt: skip
    apply(other, stand_in_bundle, kubeconfig=kubeconfig)
    api.requests.clear()

    kinds = delete(rendered.name, "ml-jobs", kubeconfig=kubeconfig)

    assert kinds == tuple(reversed(APPLY_ORDER))  # Secrets first
    assert [r.method for r in api.requests] == ["DELETE"] * len(APPLY_ORDER)
    assert {r.query["labelSelector"][0] for r in api.requests} == {
        f"trustedml.io/app={rendered.name}"
    }
    # The other application's objects stay.
    assert sorted(k[2] for k in api.objects) == sorted(o["metadata"]["name"] for o in other.objects)
    with pytest.raises(KubernetesError, match="expected a DNS-1123 label"):
        delete("x,trustedml.io/app!=y", "ml-jobs", kubeconfig=kubeconfig)


def test_without_the_kubernetes_client_apply_says_which_extra(
    app: App, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered, bundle = app
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # as if it were not installed
    with pytest.raises(KubernetesError, match=re.escape("pip install 'trusted-ml[k8s]'")):
        apply(rendered, bundle, kubeconfig=kubeconfig)
