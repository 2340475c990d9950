"""Hypothesis against every route of a real broker (TLS, uvicorn, SQLite): random
methods, paths, headers, query strings and bodies, well-formed or hostile. Whatever is
sent, the answer is 2xx or 4xx, JSON, ``Cache-Control: no-store``, and on 4xx the error
shape of docs/broker-protocol.md."""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from tests.broker.conftest import Broker, sim_policy
from tests.broker.peer import RawPeer, b64
from tests.broker.rawhttp import RawResponse, assert_json_answer, exchange, request_bytes
from trustedml.hazmat import envelope

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
# Framing headers are the test's own (a wrong Content-Length only makes the server wait
# for bytes that never come); Expect would add an interim 100 answer.
OWN_HEADERS = {"content-length", "transfer-encoding", "connection", "host", "expect"}
FIELDS = [
    "nonce", "evidence", "collateral", "client_public_key", "key_ids", "job_measurement",
    "request_id", "wrapped", "key_id", "policy",
]  # fmt: skip


@pytest.fixture(scope="module")
def keys(broker: Broker) -> list[str]:
    """Keys the fuzzed requests can name (they may disable, rotate or delete them)."""
    return [broker.new_key() for _ in range(3)]


@pytest.fixture(scope="module")
def session(broker: Broker, keys: list[str]) -> RawPeer:
    peer = RawPeer(broker)
    assert peer.attest(keys).status_code == 200
    return peer


def _routes(broker: Broker) -> list[Route]:
    return [r for r in broker.server.app.routes if isinstance(r, Route)]


def test_every_route_is_fuzzed(broker: Broker) -> None:
    # The parametrization below is written out (pytest needs it before the broker
    # starts); this keeps it equal to what the app serves.
    served = {(r.path, m) for r in _routes(broker) for m in r.methods or () if m != "HEAD"}
    assert served == set(ROUTES)


ROUTES = [
    ("/v1/keys/{key_id}/unwrap", "POST"),
    ("/v1/keys/{key_id}/datakey", "POST"),
    ("/v1/challenge", "POST"),
    ("/v1/attest", "POST"),
    ("/v1/health", "GET"),
    ("/v1/admin/keys", "GET"),
    ("/v1/admin/keys", "POST"),
    ("/v1/admin/keys/{key_id}", "GET"),
    ("/v1/admin/keys/{key_id}", "DELETE"),
    ("/v1/admin/keys/{key_id}/rotate", "POST"),
    ("/v1/admin/keys/{key_id}/disable", "POST"),
    ("/v1/admin/keys/{key_id}/enable", "POST"),
    ("/v1/admin/keys/{key_id}/policy", "GET"),
    ("/v1/admin/keys/{key_id}/policy", "PUT"),
    ("/v1/admin/audit", "GET"),
    ("/v1/admin/stats", "GET"),
]

# -- strategies ----------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=12,
)
base64_values = st.binary(max_size=96).map(b64)


def _hostile_bodies() -> st.SearchStrategy[bytes]:
    deep = st.integers(17, 3000).flatmap(
        lambda n: st.sampled_from([b"[" * n + b"]" * n, b'{"a":' * n + b"1" + b"}" * n])
    )
    huge_int = st.integers(41, 6000).map(lambda n: b'{"nonce":' + b"9" * n + b"}")
    constants = st.sampled_from(
        [b"NaN", b"Infinity", b"-Infinity", b"1e999", b'{"a":1,"a":2}', b'"\\ud800"']
    )
    return st.one_of(deep, huge_int, constants, st.binary(max_size=300))


def _bodies(keys: list[str]) -> st.SearchStrategy[bytes]:
    objects = st.fixed_dictionaries(
        {},
        optional={
            "nonce": json_values | base64_values,
            "evidence": json_values | base64_values,
            "client_public_key": json_values | st.binary(min_size=32, max_size=32).map(b64),
            "request_id": json_values | st.binary(min_size=16, max_size=16).map(b64),
            "wrapped": json_values | base64_values,
            "key_ids": json_values | st.lists(st.sampled_from(keys) | st.text(max_size=8)),
            "key_id": json_values | st.sampled_from(keys) | st.text(max_size=70),
            "policy": json_values | st.just(sim_policy()),
            "job_measurement": json_values | st.text(string.hexdigits, max_size=140),
        },
    )
    valid_json = st.one_of(objects, json_values).map(lambda v: json.dumps(v).encode())
    return st.one_of(valid_json, _hostile_bodies(), st.just(b""))


def _key_ids(keys: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([*keys, "no-such-key"]),
        st.text(max_size=80).map(lambda t: quote(t, safe="")),
        st.sampled_from(["sales%0A", "%00", "a%2Fb", "..", "%ZZ", "a" * 65, "%ff%fe"]),
    )


header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True).filter(
    lambda n: n.lower() not in OWN_HEADERS
)
header_values = st.one_of(
    st.binary(max_size=60).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F)),
    st.binary(max_size=20),  # control bytes too: the HTTP parser answers those
)
headers = st.lists(st.tuples(header_names.map(str.encode), header_values), max_size=4)
queries = st.one_of(
    st.just(""),
    st.dictionaries(
        st.sampled_from(["after", "limit", "x"]),
        st.one_of(st.integers(-(2**70), 2**70).map(str), st.text(max_size=10)),
        max_size=3,
    ).map(lambda q: "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in q.items())),
)


def _authorization(broker: Broker, session: RawPeer) -> st.SearchStrategy[bytes | None]:
    admin = broker.config.admin_token.reveal_text()
    assert session.token is not None
    return st.one_of(
        st.none(),
        st.sampled_from([f"Bearer {admin}", f"Bearer {session.token}"]).map(str.encode),
        st.binary(max_size=80).map(
            lambda b: b"Bearer " + b.replace(b"\r", b"").replace(b"\n", b"")
        ),
    )


def _check(method: bytes, response: RawResponse) -> None:
    if method == b"HEAD":  # no body by definition
        assert response.status < 500, response.status
        assert response.headers.get("cache-control") == "no-store"
        return
    assert_json_answer(response)


def _send(
    broker: Broker,
    method: bytes,
    path: str,
    *,
    auth: bytes | None,
    extra: list[tuple[bytes, bytes]],
    body: bytes,
) -> RawResponse:
    head = [(b"Content-Type", b"application/json"), *extra]
    if auth is not None:
        head.append((b"Authorization", auth))
    return exchange(broker, request_bytes(method, path.encode(), headers=head, body=body))


# -- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "method"), ROUTES)
@FUZZ
@given(data=st.data())
def test_every_endpoint_answers_json_4xx_never_5xx(
    broker: Broker,
    keys: list[str],
    session: RawPeer,
    template: str,
    method: str,
    data: st.DataObject,
) -> None:
    path = template.replace("{key_id}", data.draw(_key_ids(keys), label="key_id"))
    path += data.draw(queries, label="query")
    verb = data.draw(st.sampled_from([method] * 4 + METHODS), label="method").encode()
    response = _send(
        broker,
        verb,
        path,
        auth=data.draw(_authorization(broker, session), label="authorization"),
        extra=data.draw(headers, label="headers"),
        body=data.draw(_bodies(keys), label="body"),
    )
    _check(verb, response)


@FUZZ
@given(
    path=st.one_of(
        st.text(max_size=60).map(lambda t: "/" + quote(t, safe="/")),
        st.lists(st.sampled_from(["v1", "keys", "admin", "", "..", "%2e", "k"]), max_size=6).map(
            lambda parts: "/" + "/".join(parts)
        ),
    ),
    method=st.sampled_from(METHODS) | st.from_regex(r"[A-Z]{1,12}", fullmatch=True),
    body=st.binary(max_size=100),
)
def test_random_paths_and_methods(broker: Broker, path: str, method: str, body: bytes) -> None:
    response = _send(broker, method.encode(), path, auth=None, extra=[], body=body)
    _check(method.encode(), response)


@FUZZ
@given(data=st.data())
def test_release_after_attesting_with_hostile_fields(
    broker: Broker, keys: list[str], session: RawPeer, data: st.DataObject
) -> None:
    """Past the token check: the session's own client key, random wrapped keys."""
    key_id = data.draw(st.sampled_from(keys))
    assert session.token is not None
    body: dict[str, Any] = {
        "client_public_key": b64(session.public_key),
        "request_id": b64(data.draw(st.binary(min_size=16, max_size=16))),
        "wrapped": data.draw(
            st.one_of(
                st.binary(min_size=1, max_size=200).map(b64),
                st.integers(0, 2**40).map(lambda v: b64(v.to_bytes(8, "big") + bytes(60))),
                json_values,
            )
        ),
    }
    operation = data.draw(st.sampled_from(["unwrap", "datakey"]))
    response = _send(
        broker,
        b"POST",
        f"/v1/keys/{key_id}/{operation}",
        auth=f"Bearer {session.token}".encode(),
        extra=[],
        body=json.dumps(body).encode(),
    )
    doc = assert_json_answer(response)
    if response.status == 200:
        sealed = base64.b64decode(doc["sealed_key"])
        assert len(sealed) > envelope.IV_SIZE


@pytest.fixture(scope="module", autouse=True)
def _broker_still_serves(broker: Broker) -> Iterator[None]:
    yield
    # Whatever the fuzzing did, the broker is still up and answers properly.
    assert broker.admin().stats()["keys"] >= 0
