"""Bad input and limits: always a 4xx with a reason, never a 500."""

from __future__ import annotations

import base64
import json
import logging
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.broker.conftest import (
    MEASUREMENT,
    Broker,
    save_sim_private_key,
    sim_policy,
    start_broker,
)
from tests.broker.peer import RawPeer, b64
from tests.broker.rawhttp import assert_json_answer, exchange, request_bytes
from tests.conftest import run_cli
from trustedml import ConfigError, KeyDirectory, KeyRing, Secret
from trustedml.attestation import SimKey
from trustedml.broker import (
    BrokerAdminClient,
    BrokerConfig,
    BrokerRefusedError,
    BrokerUnavailableError,
    client_ssl_context,
)
from trustedml.broker._http import MAX_REQUEST_HEAD


@pytest.fixture
def http(broker: Broker) -> httpx.Client:
    client = httpx.Client(base_url=broker.url, verify=client_ssl_context(broker.ca), timeout=30)
    broker.clients.append(client)
    return client


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    doc = response.json()
    assert isinstance(doc, dict)
    assert doc["error"]
    assert doc["message"]
    return doc


@pytest.mark.parametrize("path", ["/v1/attest", "/v1/keys/k/datakey", "/v1/keys/k/unwrap"])
@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"null", b"[]", b'"text"', b"\xff\xfe", b'{"nonce": 1}', b"{}"],
)
def test_malformed_json_is_400(http: httpx.Client, path: str, body: bytes) -> None:
    response = http.post(path, content=body, headers={"Content-Type": "application/json"})
    doc = _error(response, 400)
    assert doc["error"] == "bad_request"


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("nonce", "not base64!", "nonce: not valid base64"),
        ("nonce", b64(b"short"), "nonce: expected 32 bytes"),
        ("client_public_key", b64(b"x" * 31), "client_public_key: expected 32 bytes"),
        ("evidence", 42, "evidence: expected a base64 string"),
        ("evidence", "", "evidence: must not be empty"),
        ("key_ids", [], "key_ids"),
        ("key_ids", "k", "key_ids"),
        ("key_ids", ["bad key"], "key_ids[]"),
        ("job_measurement", "xyz", "job_measurement"),
        ("job_measurement", "ab" * 65, "job_measurement"),
    ],
)
def test_bad_attest_fields_are_400_naming_the_field(
    broker: Broker, field: str, value: object, fragment: str
) -> None:
    peer = RawPeer(broker)
    body = peer.attest_body(peer.challenge(), ["k"])
    body[field] = value
    doc = _error(peer.http.post("/v1/attest", json=body), 400)
    assert fragment in str(doc["message"])


def test_request_size_caps(broker: Broker, http: httpx.Client) -> None:
    big = b"{" + b" " * (broker.config.max_body + 1) + b"}"
    doc = _error(http.post("/v1/keys/k/unwrap", content=big), 413)
    assert doc["error"] == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(broker.config.max_attest_body // 65536 + 2):
            yield b" " * 65536

    doc = _error(http.post("/v1/attest", content=chunks()), 413)
    assert doc["error"] == "too_large"
    _error(http.post("/v1/challenge", content=b"x" * (broker.config.max_body + 1)), 413)


def test_challenge_rate_per_client(fresh_broker: Broker) -> None:
    http = httpx.Client(base_url=fresh_broker.url, verify=client_ssl_context(fresh_broker.ca))
    fresh_broker.clients.append(http)
    burst = fresh_broker.config.challenge_burst
    statuses = [http.post("/v1/challenge").status_code for _ in range(burst + 5)]
    assert statuses[:burst] == [200] * burst
    assert statuses[burst:] == [429] * 5
    response = http.post("/v1/challenge")
    doc = _error(response, 429)
    assert doc["error"] == "rate_limited"
    assert int(response.headers["retry-after"]) >= 1
    fresh_broker.clock.advance(1.0)  # the bucket refills at challenge_rate per second
    assert http.post("/v1/challenge").status_code == 200


def test_client_gives_up_after_retrying_rate_limits(fresh_broker: Broker) -> None:
    http = httpx.Client(base_url=fresh_broker.url, verify=client_ssl_context(fresh_broker.ca))
    fresh_broker.clients.append(http)
    key_id = fresh_broker.new_key()
    for _ in range(fresh_broker.config.challenge_burst):
        http.post("/v1/challenge")
    with pytest.raises(BrokerRefusedError) as info:
        fresh_broker.client().generate_data_key(key_id)
    assert info.value.status == 429


def test_unknown_routes_and_methods_are_json_4xx(http: httpx.Client) -> None:
    assert _error(http.get("/v1/nothing"), 404)["error"] == "not_found"
    assert _error(http.get("/v1/challenge"), 405)["error"] == "method_not_allowed"
    assert _error(http.get("/"), 404)["error"] == "not_found"
    assert http.get("/v1/health").json()["status"] == "ok"


PATHS = ["/v1/attest", "/v1/keys/k/datakey", "/v1/keys/k/unwrap", "/v1/challenge"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "nonce": json_values | st.binary(max_size=40).map(b64),
        "evidence": json_values | st.binary(max_size=200).map(b64),
        "collateral": json_values,
        "client_public_key": json_values | st.binary(min_size=32, max_size=32).map(b64),
        "key_ids": json_values | st.lists(st.text(max_size=8), max_size=3),
        "job_measurement": json_values,
        "request_id": json_values | st.binary(min_size=16, max_size=16).map(b64),
        "wrapped": json_values | st.binary(max_size=80).map(b64),
    },
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(PATHS),
    body=fields,
    # Header values an HTTP client can send; bytes HTTP forbids never reach the app
    # (the server's HTTP parser answers them, see the test below).
    token=st.none() | st.from_regex(r"[!-~]{1,50}", fullmatch=True),
)
def test_random_requests_never_get_a_500(
    http: httpx.Client, path: str, body: dict[str, object], token: str | None
) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = http.post(path, content=json.dumps(body).encode(), headers=headers)
    assert 200 <= response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["message"]


def test_a_header_http_forbids_is_a_400_not_a_500(broker: Broker) -> None:
    context = client_ssl_context(broker.ca)
    request = (
        b"POST /v1/attest HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \x1f\r\n"
        b"Content-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
    )
    with (
        socket.create_connection(("127.0.0.1", broker.server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(request)
        reply = tls.recv(4096)
    status = int(reply.split(b" ", 2)[1])
    assert 400 <= status < 500, reply[:200]


def _mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    flips = st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(1, 255)), max_size=4)

    def flip(changes: list[tuple[int, int]]) -> bytes:
        out = bytearray(valid)
        for index, mask in changes:
            out[index] ^= mask
        return bytes(out)

    return st.one_of(
        flips.map(flip),
        st.integers(1, len(valid) - 1).map(lambda n: valid[:n]),
        st.binary(min_size=1, max_size=64).map(lambda extra: valid + extra),
    )


EVIDENCE_LIKE = st.one_of(
    st.binary(min_size=1, max_size=2000),
    st.binary(max_size=400).map(lambda tail: b"TMLSIM01" + tail),
    st.tuples(st.sampled_from([3, 4, 5]), st.integers(1, 3), st.sampled_from([0, 0x81, 7]),
              st.binary(max_size=1500))
    .map(lambda t: struct.pack("<HHI", t[0], t[1], t[2]) + t[3]),
    st.tuples(st.integers(2, 5), st.binary(min_size=0x4A0, max_size=0x4A0))
    .map(lambda t: struct.pack("<I", t[0]) + t[1][4:]),
)  # fmt: skip


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_hostile_evidence_is_a_4xx_with_a_reason(broker: Broker, data: st.DataObject) -> None:
    peer = RawPeer(broker)
    nonce = peer.challenge()
    body = peer.attest_body(nonce, ["k"])
    valid = base64.b64decode(body["evidence"])
    evidence = data.draw(st.one_of(EVIDENCE_LIKE, _mutations(valid)))
    body["evidence"] = b64(evidence)
    response = peer.http.post("/v1/attest", json=body)
    assert response.status_code in (400, 401, 403, 404), response.text
    assert response.json()["message"]
    peer.http.close()


# -- issue #12: what an attacker's review found -------------------------------------------


def test_a_key_id_with_a_trailing_newline_is_refused_before_sending(broker: Broker) -> None:
    key_id = broker.new_key()
    before = broker.admin().stats()["audit_seq"]
    client = broker.client()
    for bad in (f"{key_id}\n", "sales\n", "sales\r\n", "\nsales"):
        with pytest.raises(ConfigError, match="key id: expected"):
            client.generate_data_key(bad)
        with pytest.raises(ConfigError, match="key id: expected"):
            client.unwrap_data_key(bad, b"x" * 60)
        with pytest.raises(ConfigError, match="key id: expected"):
            broker.admin().create_key(bad, sim_policy())
        with pytest.raises(ConfigError):
            KeyRing({bad: bytes(32)})
    # Nothing reached the broker: no challenge, no attestation, no admin call audited.
    assert broker.admin().stats()["audit_seq"] == before


def test_the_broker_refuses_a_key_id_with_a_newline(broker: Broker, http: httpx.Client) -> None:
    admin = {"Authorization": f"Bearer {broker.config.admin_token.reveal_text()}"}
    doc = _error(http.post("/v1/admin/keys", json={"key_id": "sales\n"}, headers=admin), 400)
    assert "key id: expected" in str(doc["message"])
    for path in ("/v1/keys/sales%0A/unwrap", "/v1/admin/keys/sales%0A", "/v1/health%0A"):
        doc = _error(http.post(path, json={}, headers=admin), 400)
        assert doc["error"] == "bad_request"
    peer = RawPeer(broker)
    body = peer.attest_body(peer.challenge(), ["sales\n"])
    assert "key_ids[]" in str(_error(peer.http.post("/v1/attest", json=body), 400)["message"])
    body = peer.attest_body(peer.challenge(), ["k"])
    body["job_measurement"] = "aaa\n"
    assert "job_measurement" in str(_error(peer.http.post("/v1/attest", json=body), 400)["message"])


def test_cli_encrypt_with_a_newline_in_the_key_id_exits_2(broker: Broker, tmp_path: Path) -> None:
    source = tmp_path / "plain.txt"
    source.write_text("x")
    sim = save_sim_private_key(broker.sim_key, tmp_path / "sim.pem")
    result = run_cli(
        ["encrypt", str(source), str(tmp_path / "out.tml"), "--key-id", "sales\n",
         "--broker", broker.url, "--ca", str(broker.ca), "--evidence-provider", "sim",
         "--sim-key", str(sim), "--sim-measurement", MEASUREMENT.hex()]
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "key id: expected" in lines[0]
    assert "'sales\\n'" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.tml").exists()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[" * 100_000, "nested at most 16 levels"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested at most 16 levels"),
        (b'{"nonce":' + b"7" * 5000 + b"}", "at most 40 characters, got one of 5000"),
        (b'{"nonce":1' + b"0" * 5000 + b".5}", "at most 40 characters"),
        (b'{"nonce":1e999}', "finite number"),
        (b'{"nonce":NaN}', "standard JSON, got NaN"),
        (b'{"nonce":-Infinity}', "standard JSON, got -Infinity"),
        (b'{"nonce":"a","nonce":"b"}', "unique member names"),
        (b'{"nonce":"\\udc00"}', "lone surrogate"),
        (b'\xef\xbb\xbf{"nonce":"a"}', "expected JSON"),
        (b'{"nonce":"\xff"}', "expected UTF-8"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/attest", "/v1/keys/k/unwrap", "/v1/admin/keys"])
def test_hostile_json_is_400_naming_the_limit(
    broker: Broker, http: httpx.Client, path: str, body: bytes, fragment: str
) -> None:
    admin = {"Authorization": f"Bearer {broker.config.admin_token.reveal_text()}"}
    if len(body) > broker.config.max_body and path != "/v1/attest":
        body = body[: broker.config.max_body]  # stays hostile, under the size limit
    doc = _error(http.post(path, content=body, headers=admin), 400)
    assert doc["error"] == "bad_request"
    assert fragment in str(doc["message"]), doc


def test_a_policy_with_hostile_json_is_400(broker: Broker, http: httpx.Client) -> None:
    key_id = broker.new_key()
    admin = {"Authorization": f"Bearer {broker.config.admin_token.reveal_text()}"}
    for body in (
        b'{"policy":' * 40 + b"null" + b"}" * 40,
        b'{"policy":{"min_isv_svn":' + b"9" * 5000 + b"}}",
    ):
        doc = _error(http.put(f"/v1/admin/keys/{key_id}/policy", content=body, headers=admin), 400)
        assert doc["error"] == "bad_request"


def test_an_8_mib_header_is_431_json(broker: Broker) -> None:
    huge = request_bytes("GET", "/v1/health", headers=[(b"X-Big", b"a" * (8 << 20))])
    response = exchange(broker, huge)
    assert response.status == 431
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["error"] == "header_too_large"
    assert "16384" in response.json()["message"]
    # Many small headers count too, and so does a long request line.
    many = [(f"X-H{i}".encode(), b"v" * 100) for i in range(400)]
    assert exchange(broker, request_bytes("GET", "/v1/health", headers=many)).status == 431
    assert exchange(broker, request_bytes("GET", "/v1/health?" + "q" * 40_000)).status == 431
    # A head just under the limit is served.
    fits = request_bytes("GET", "/v1/health", headers=[(b"X-Pad", b"p" * (MAX_REQUEST_HEAD - 200))])
    assert assert_json_answer(exchange(broker, fits))["status"] == "ok"


def test_trailing_slash_is_a_json_404_not_a_redirect(http: httpx.Client) -> None:
    for path in ("/v1/health/", "/v1/challenge/", "/v1/admin/keys/"):
        response = http.request("GET", path)
        assert response.status_code in (404, 405), (path, response.status_code)
        assert "location" not in response.headers
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"] in ("not_found", "method_not_allowed")


@pytest.mark.parametrize(
    "request_",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST /v1/challenge HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /v1/health\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"BREW /v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
def test_malformed_http_gets_a_json_400(broker: Broker, request_: bytes) -> None:
    response = exchange(broker, request_)
    assert response.status == 400
    assert_json_answer(response)
    assert response.json()["error"] == "bad_request"


def test_over_the_connection_limit_is_a_json_503(
    tmp_path: Path, base_config: BrokerConfig, broker_keys: KeyDirectory, sim_key: SimKey
) -> None:
    limited = start_broker(base_config, broker_keys, sim_key, tmp_path / "b.db", max_connections=1)
    try:
        response = exchange(limited, request_bytes("GET", "/v1/health"))
    finally:
        limited.server.stop()
    assert response.status == 503
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["error"] == "busy"


def test_access_log_has_no_query_string(
    tmp_path: Path,
    base_config: BrokerConfig,
    broker_keys: KeyDirectory,
    sim_key: SimKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    logged = start_broker(base_config, broker_keys, sim_key, tmp_path / "b.db", access_log=True)
    try:
        with caplog.at_level(logging.INFO, logger="trustedml.broker.access"):
            http = httpx.Client(base_url=logged.url, verify=client_ssl_context(logged.ca))
            with http:
                http.get("/v1/admin/audit?after=0&limit=5&token=s3cr3t-in-query")
                http.get("/v1/health", params={"password": "hunter2"})
                http.get("/v1/nothing%0Aforged line")
    finally:
        logged.server.stop()
    lines = [r for r in caplog.records if r.name == "trustedml.broker.access"]
    assert [(r.method, r.path, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("GET", "/v1/admin/audit", 401),
        ("GET", "/v1/health", 200),
        ("GET", "/v1/nothing%0Aforged%20line", 400),
    ]
    text = "\n".join(r.getMessage() for r in lines)
    for leaked in ("?", "s3cr3t", "hunter2"):
        assert leaked not in text
    assert text.count("\n") == 2
    assert all(r.duration_ms >= 0 for r in lines)  # type: ignore[attr-defined]


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"error":' + b"7" * 5000 + b"}", b"<html>"])
def test_the_client_survives_a_hostile_peer(body: bytes) -> None:
    # Not a broker: a peer answering what no broker sends (the client's TLS checks are
    # tested elsewhere; this is what it does with the bytes).
    transport = httpx.MockTransport(lambda _request: httpx.Response(400, content=body))
    with (
        BrokerAdminClient("https://peer", admin_token=Secret("t"), transport=transport) as admin,
        pytest.raises(BrokerUnavailableError, match="HTTP 400 without a JSON body"),
    ):
        admin.stats()


def test_a_client_leaving_mid_body_is_not_an_internal_error(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    context = client_ssl_context(broker.ca)
    head = request_bytes("POST", "/v1/attest", body=b"x" * 1000).split(b"\r\n\r\n")[0]
    with caplog.at_level(logging.INFO, logger="trustedml.broker"):
        with (
            socket.create_connection(("127.0.0.1", broker.server.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(head + b"\r\n\r\n" + b'{"nonce":')
            time.sleep(0.2)  # the handler is reading the body now
        time.sleep(0.3)  # the server has seen the connection go
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
