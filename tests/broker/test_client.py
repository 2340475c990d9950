"""The client's handling of what a broker (or something pretending to be one) answers,
through an injected httpx transport. The protocol itself is tested against a real broker
in test_protocol.py."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable

import httpx
import pytest

from trustedml import Secret
from trustedml.attestation import SimKey, SimProvider
from trustedml.broker import (
    BrokerAdminClient,
    BrokerKeyNotFoundError,
    BrokerRefusedError,
    BrokerUnavailableError,
    KeyBrokerClient,
)
from trustedml.errors import ConfigError, KeyNotFoundError, KeyStoreError

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, **kwargs: object) -> KeyBrokerClient:
    provider = SimProvider(SimKey.generate(), measurement=b"\x11" * 32)
    return KeyBrokerClient(
        "http://broker.test", provider=provider, transport=httpx.MockTransport(handler), **kwargs
    )  # type: ignore[arg-type]


def test_refusals_carry_status_code_and_reasons() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/challenge":
            return httpx.Response(200, json={"nonce": "A" * 43 + "="})
        return httpx.Response(
            403,
            json={"error": "policy_refused", "message": "no", "reasons": ["first", "second"]},
        )

    with pytest.raises(BrokerRefusedError) as info:
        _client(handler).generate_data_key("k1")
    assert (info.value.status, info.value.code) == (403, "policy_refused")
    assert info.value.reasons == ("first", "second")
    assert "first; second" in str(info.value)
    assert isinstance(info.value, KeyStoreError)


def test_404_is_a_key_not_found_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "unknown_key", "message": "no key 'k1'"})

    admin = BrokerAdminClient(
        "http://broker.test", admin_token=Secret("t" * 43), transport=httpx.MockTransport(handler)
    )
    with pytest.raises(BrokerKeyNotFoundError) as info:
        admin.get_key("k1")
    assert isinstance(info.value, KeyNotFoundError)
    admin.close()


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(500, json={"error": "internal", "message": "internal error"}),
        httpx.Response(200, content=b"<html>not json</html>"),
        httpx.Response(200, json=["not", "an", "object"]),
        httpx.Response(200, json={"no": "nonce"}),
    ],
)
def test_broken_answers_are_unavailable_errors(response: httpx.Response) -> None:
    with pytest.raises(BrokerUnavailableError):
        _client(lambda request: response).generate_data_key("k1")


def test_network_failures_are_unavailable_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(BrokerUnavailableError, match="cannot be reached"):
        _client(handler).generate_data_key("k1")


def test_challenges_are_retried_on_429_then_given_up() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(
            429,
            json={"error": "rate_limited", "message": "slow down"},
            headers={"Retry-After": "0"},
        )

    with pytest.raises(BrokerRefusedError) as info:
        _client(handler).generate_data_key("k1")
    assert info.value.status == 429
    assert calls == ["/v1/challenge"] * 4


def test_attest_request_carries_the_binding_inputs() -> None:
    seen: dict[str, object] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/challenge":
            return httpx.Response(200, json={"nonce": "A" * 43 + "="})
        seen.update(json.loads(request.content))
        return httpx.Response(403, json={"error": "policy_refused", "message": "no"})

    client = _client(handler, key_ids=["a", "b"], job_measurement=b"\xab" * 32, collateral=b"c")
    with pytest.raises(BrokerRefusedError):
        client.attest(["c"])
    assert seen["key_ids"] == ["a", "b", "c"]
    assert seen["job_measurement"] == "ab" * 32
    assert seen["collateral"] == "Yw=="
    assert set(seen) == {
        "nonce", "evidence", "client_public_key", "key_ids", "job_measurement", "collateral",
    }  # fmt: skip


def test_bad_arguments() -> None:
    provider = SimProvider(SimKey.generate(), measurement=b"\x11" * 32)
    with pytest.raises(ConfigError, match="job measurement"):
        KeyBrokerClient("https://x", provider=provider, job_measurement=b"x" * 65)
    with pytest.raises(ConfigError, match="key id"):
        KeyBrokerClient("https://x", provider=provider, key_ids=["bad id"])
    with pytest.raises(ConfigError, match="CA certificate"):
        KeyBrokerClient("https://x", provider=provider, ca=b"not a certificate")
    client = KeyBrokerClient("https://x", provider=provider)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(client)
    client.close()
