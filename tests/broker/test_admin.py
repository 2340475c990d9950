"""The admin API: only with the admin credential; keys, policies and the audit log."""

from __future__ import annotations

import httpx
import pytest

from tests.broker.conftest import OTHER_MEASUREMENT, Broker, new_key_id, sim_policy
from trustedml import Secret
from trustedml.attestation import Policy
from trustedml.broker import (
    BrokerAdminClient,
    BrokerKeyNotFoundError,
    BrokerRefusedError,
    client_ssl_context,
)

ADMIN_CALLS = [
    ("GET", "/v1/admin/keys", None),
    ("POST", "/v1/admin/keys", {"key_id": "sneaky", "policy": None}),
    ("GET", "/v1/admin/keys/sneaky", None),
    ("DELETE", "/v1/admin/keys/sneaky", None),
    ("POST", "/v1/admin/keys/sneaky/rotate", {}),
    ("POST", "/v1/admin/keys/sneaky/disable", {}),
    ("POST", "/v1/admin/keys/sneaky/enable", {}),
    ("GET", "/v1/admin/keys/sneaky/policy", None),
    ("PUT", "/v1/admin/keys/sneaky/policy", {"policy": None}),
    ("GET", "/v1/admin/audit", None),
    ("GET", "/v1/admin/stats", None),
]


@pytest.fixture
def http(broker: Broker) -> httpx.Client:
    client = httpx.Client(base_url=broker.url, verify=client_ssl_context(broker.ca))
    broker.clients.append(client)
    return client


@pytest.mark.parametrize(
    "auth", [None, "Bearer wrong-token", "Basic YWRtaW46YWRtaW4=", "Bearer", "bearer x y"]
)
def test_admin_calls_without_the_admin_credential_are_refused(
    broker: Broker, http: httpx.Client, auth: str | None
) -> None:
    headers = {"Authorization": auth} if auth else {}
    for method, path, body in ADMIN_CALLS:
        response = http.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"] == "admin_unauthorized"
    assert "sneaky" not in [k["key_id"] for k in broker.admin().list_keys()]


def test_a_session_token_is_not_an_admin_credential(broker: Broker, http: httpx.Client) -> None:
    from tests.broker.peer import RawPeer

    key_id = broker.new_key()
    peer = RawPeer(broker)
    peer.attest([key_id])
    response = http.get("/v1/admin/keys", headers={"Authorization": f"Bearer {peer.token}"})
    assert response.status_code == 401


def test_refused_admin_calls_are_audited(broker: Broker, http: httpx.Client) -> None:
    http.delete("/v1/admin/keys/whatever", headers={"Authorization": "Bearer nope"})
    entries = broker.admin().audit(after=0, limit=1000)["entries"]
    refused = [e for e in entries if e["event"] == "admin.refused"]
    assert refused
    assert refused[-1]["details"]["action"] == "key.delete"
    assert refused[-1]["client"] == "127.0.0.1"


def test_wrong_admin_token_through_the_client(broker: Broker) -> None:
    admin = BrokerAdminClient(broker.url, admin_token=Secret("x" * 43), ca=broker.ca)
    with pytest.raises(BrokerRefusedError) as info:
        admin.list_keys()
    admin.close()
    assert info.value.status == 401


def test_key_life_cycle(broker: Broker) -> None:
    admin = broker.admin()
    key_id = new_key_id("cycle")
    created = admin.create_key(key_id, Policy.from_dict(sim_policy()))
    assert created["state"] == "enabled"
    assert created["current_version"] == 1
    assert created["policy"]["allow_simulated"] is True
    with pytest.raises(BrokerRefusedError) as info:
        admin.create_key(key_id)
    assert (info.value.status, info.value.code) == (409, "key_exists")
    assert key_id in [k["key_id"] for k in admin.list_keys()]
    assert admin.rotate_key(key_id)["current_version"] == 2
    assert admin.disable_key(key_id)["state"] == "disabled"
    assert admin.enable_key(key_id)["state"] == "enabled"
    updated = admin.set_policy(key_id, sim_policy(OTHER_MEASUREMENT))
    assert updated["policy_revision"] == 2
    shown = admin.get_policy(key_id)
    assert shown["policy"]["allow"][0]["measurement"] == OTHER_MEASUREMENT.hex()
    assert admin.get_key(key_id)["versions"] == [1, 2]
    assert admin.delete_key(key_id) == {"key_id": key_id, "deleted": True, "versions": [1, 2]}
    with pytest.raises(BrokerKeyNotFoundError):
        admin.get_key(key_id)
    with pytest.raises(BrokerKeyNotFoundError):
        admin.rotate_key(key_id)
    events = [
        e["event"]
        for e in admin.audit(limit=1000)["entries"]
        if e["key_id"] == key_id and e["event"].startswith("key.")
    ]
    assert events == [
        "key.create",
        "key.rotate",
        "key.disable",
        "key.enable",
        "key.policy",
        "key.delete",
    ]


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        ({"allow_simulated": "yes"}, "allow_simulated"),
        ({"allow": [{"type": "sim", "measurement": "zz"}]}, "measurement"),
        ({"no_such_field": 1}, "no_such_field"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_invalid_policies_are_400_naming_the_field(
    broker: Broker, policy: object, fragment: str
) -> None:
    key_id = broker.new_key()
    with pytest.raises(BrokerRefusedError) as info:
        broker.admin().set_policy(key_id, policy)  # type: ignore[arg-type]
    assert (info.value.status, info.value.code) == (400, "bad_policy")
    assert fragment in str(info.value)


def test_invalid_key_ids_are_400(broker: Broker, http: httpx.Client) -> None:
    headers = {"Authorization": f"Bearer {broker.config.admin_token.reveal_text()}"}
    for bad in ("", "-leading-dash", "a" * 65, "spaces here", 7):
        response = http.post("/v1/admin/keys", json={"key_id": bad}, headers=headers)
        assert response.status_code == 400, bad
        assert "key id" in response.json()["message"]


def test_audit_log_paging(broker: Broker) -> None:
    admin = broker.admin()
    broker.new_key()
    first = admin.audit(after=0, limit=2)
    assert [e["seq"] for e in first["entries"]] == [1, 2]
    assert first["entries"][0]["event"] == "broker.start"
    assert first["entries"][1]["prev_mac"] == first["entries"][0]["mac"]
    rest = admin.audit(after=2, limit=1000)
    assert rest["entries"][0]["seq"] == 3
    assert rest["head"]["seq"] >= rest["entries"][-1]["seq"]
    with pytest.raises(BrokerRefusedError):
        admin.audit(after=-1)
    with pytest.raises(BrokerRefusedError):
        admin.audit(limit=100_000)
