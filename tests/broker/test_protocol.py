"""The broker protocol end to end, against a real broker over TLS on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.broker.conftest import (
    MEASUREMENT,
    OTHER_MEASUREMENT,
    Broker,
    sim_policy,
)
from tests.broker.peer import RawPeer, b64, unb64
from tests.conftest import ROOT
from trustedml import KeyStore, Secret, decrypt_file, encrypt_file
from trustedml.attestation import SimKey
from trustedml.broker import BrokerKeyNotFoundError, BrokerRefusedError
from trustedml.errors import IntegrityError, KeyNotFoundError
from trustedml.hazmat import envelope

# -- acceptance: who gets keys -----------------------------------------------------------


def test_sim_client_with_allowed_measurement_gets_and_unwraps_a_data_key(broker: Broker) -> None:
    key_id = broker.new_key()
    client = broker.client()
    assert isinstance(client, KeyStore)
    data_key = client.generate_data_key(key_id)
    assert data_key.key_id == key_id
    assert len(data_key.plaintext) == 32
    assert len(data_key.wrapped) == 66
    assert client.unwrap_data_key(key_id, data_key.wrapped) == data_key.plaintext
    # Another attested client unwraps it too.
    assert broker.client().unwrap_data_key(key_id, data_key.wrapped) == data_key.plaintext


def test_other_measurement_is_refused_with_403_and_reasons(broker: Broker) -> None:
    key_id = broker.new_key()
    wrapped = broker.client().generate_data_key(key_id).wrapped
    with pytest.raises(BrokerRefusedError) as info:
        broker.client(OTHER_MEASUREMENT).unwrap_data_key(key_id, wrapped)
    assert info.value.status == 403
    assert info.value.code == "policy_refused"
    assert any("measurement" in r and "expected 1111" in r for r in info.value.reasons)
    # The raw response lists the reasons too.
    response = RawPeer(broker, OTHER_MEASUREMENT).attest([key_id])
    assert response.status_code == 403
    doc = response.json()
    assert doc["error"] == "policy_refused"
    assert any("got 2222" in r for r in doc["reasons"])


def test_policy_without_allow_simulated_refuses_sim_evidence(broker: Broker) -> None:
    key_id = broker.new_key(sim_policy(allow_simulated=False))
    with pytest.raises(BrokerRefusedError) as info:
        broker.client().generate_data_key(key_id)
    assert info.value.status == 403
    assert any("simulated evidence is not allowed" in r for r in info.value.reasons)


def test_key_without_policy_refuses_release(broker: Broker) -> None:
    key_id = broker.new_key()
    broker.admin().set_policy(key_id, None)
    with pytest.raises(BrokerRefusedError, match="has no release policy") as info:
        broker.client().generate_data_key(key_id)
    assert info.value.status == 403


def test_untrusted_sim_key_fails_verification(broker: Broker) -> None:
    key_id = broker.new_key()
    response = RawPeer(broker, sim_key=SimKey.generate()).attest([key_id])
    assert response.status_code == 403
    assert response.json()["error"] == "attestation_failed"
    assert "untrusted key" in response.json()["message"]


def test_malformed_evidence_is_400(broker: Broker) -> None:
    key_id = broker.new_key()
    peer = RawPeer(broker)
    body = peer.attest_body(peer.challenge(), [key_id])
    body["evidence"] = "AAAAAAAAAAAAAAAA"
    response = peer.http.post("/v1/attest", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_evidence"
    body = peer.attest_body(peer.challenge(), [key_id])
    evidence = bytearray(unb64(body["evidence"]))
    evidence[20] ^= 0xFF  # inside the signed body: the signature no longer verifies
    body["evidence"] = b64(bytes(evidence))
    response = peer.http.post("/v1/attest", json=body)
    assert response.status_code in (400, 403)
    assert response.json()["reasons"]


# -- acceptance: what is refused ---------------------------------------------------------


def test_replayed_nonce_is_refused(broker: Broker) -> None:
    key_id = broker.new_key()
    peer = RawPeer(broker)
    body = peer.attest_body(peer.challenge(), [key_id])
    assert peer.http.post("/v1/attest", json=body).status_code == 200
    replay = peer.http.post("/v1/attest", json=body)
    assert replay.status_code == 401
    assert replay.json()["error"] == "bad_nonce"
    assert "already used" in replay.json()["message"]


def test_refused_attempt_also_spends_the_nonce(broker: Broker) -> None:
    key_id = broker.new_key()
    peer = RawPeer(broker)
    nonce = peer.challenge()
    bad = peer.attest_body(nonce, [key_id], bind_public_key=os.urandom(32))
    assert peer.http.post("/v1/attest", json=bad).status_code == 403
    good = peer.attest_body(nonce, [key_id])
    assert peer.http.post("/v1/attest", json=good).json()["error"] == "bad_nonce"


def test_unknown_nonce_is_refused(broker: Broker) -> None:
    key_id = broker.new_key()
    peer = RawPeer(broker)
    response = peer.http.post("/v1/attest", json=peer.attest_body(os.urandom(32), [key_id]))
    assert response.status_code == 401
    assert "unknown nonce" in response.json()["message"]


def test_expired_nonce_is_refused(fresh_broker: Broker) -> None:
    key_id = fresh_broker.new_key()
    peer = RawPeer(fresh_broker)
    nonce = peer.challenge()
    fresh_broker.clock.advance(fresh_broker.config.challenge_ttl + 1)
    response = peer.http.post("/v1/attest", json=peer.attest_body(nonce, [key_id]))
    assert response.status_code == 401
    assert response.json()["error"] == "nonce_expired"


def test_report_data_not_binding_the_client_key_is_refused(broker: Broker) -> None:
    key_id = broker.new_key()
    peer = RawPeer(broker)
    response = peer.attest([key_id], bind_public_key=os.urandom(32))
    assert response.status_code == 403
    assert response.json()["error"] == "binding_mismatch"
    # Nor a report_data that binds nothing at all.
    response = peer.attest([key_id], report_data=b"\x00" * 64)
    assert response.json()["error"] == "binding_mismatch"


def test_token_used_with_another_key_pair_is_refused(broker: Broker) -> None:
    key_id = broker.new_key()
    peer = RawPeer(broker)
    assert peer.attest([key_id]).status_code == 200
    thief = envelope.public_key_bytes(envelope.generate_private_key())
    response, _ = peer.release("datakey", key_id, public_key=thief)
    assert response.status_code == 401
    assert response.json()["error"] == "key_mismatch"
    # With its own key the session works; the key comes sealed to that key only.
    response, request_id = peer.release("datakey", key_id)
    assert response.status_code == 200
    assert len(peer.open("datakey", key_id, response, request_id)) == 32


def test_token_after_expiry_is_refused(fresh_broker: Broker) -> None:
    key_id = fresh_broker.new_key()
    peer = RawPeer(fresh_broker)
    assert peer.attest([key_id]).status_code == 200
    assert peer.release("datakey", key_id)[0].status_code == 200
    fresh_broker.clock.advance(fresh_broker.config.token_ttl + 1)
    response, _ = peer.release("datakey", key_id)
    assert response.status_code == 401
    assert response.json()["error"] in ("token_expired", "invalid_token")


def test_missing_and_unknown_tokens_are_refused(broker: Broker) -> None:
    key_id = broker.new_key()
    peer = RawPeer(broker)
    response, _ = peer.release("datakey", key_id)
    assert (response.status_code, response.json()["error"]) == (401, "missing_token")
    response, _ = peer.release("datakey", key_id, token="not-a-token")
    assert (response.status_code, response.json()["error"]) == (401, "invalid_token")


def test_client_attests_again_when_its_token_expires(fresh_broker: Broker) -> None:
    key_id = fresh_broker.new_key()
    client = fresh_broker.client()
    data_key = client.generate_data_key(key_id)
    fresh_broker.clock.advance(fresh_broker.config.token_ttl + 1)
    assert client.unwrap_data_key(key_id, data_key.wrapped) == data_key.plaintext


def test_token_is_scoped_to_the_attested_keys(broker: Broker) -> None:
    first, second = broker.new_key(), broker.new_key()
    peer = RawPeer(broker)
    assert peer.attest([first]).status_code == 200
    response, _ = peer.release("datakey", second)
    assert (response.status_code, response.json()["error"]) == (403, "not_in_scope")
    # The client attests again, for both keys, when it needs another key.
    client = broker.client()
    client.generate_data_key(first)
    client.generate_data_key(second)


def test_unknown_key_is_404_and_disabled_key_is_403(broker: Broker) -> None:
    key_id = broker.new_key()
    client = broker.client()
    data_key = client.generate_data_key(key_id)
    with pytest.raises(BrokerKeyNotFoundError) as info:
        client.generate_data_key("no-such-key")
    assert info.value.status == 404
    assert isinstance(info.value, KeyNotFoundError)
    broker.admin().disable_key(key_id)
    with pytest.raises(BrokerRefusedError) as refused:
        client.unwrap_data_key(key_id, data_key.wrapped)
    assert (refused.value.status, refused.value.code) == (403, "key_disabled")
    with pytest.raises(BrokerRefusedError) as refused:
        broker.client().unwrap_data_key(key_id, data_key.wrapped)  # at attestation
    assert refused.value.status == 403
    broker.admin().enable_key(key_id)
    assert client.unwrap_data_key(key_id, data_key.wrapped) == data_key.plaintext


def test_rotation_keeps_old_versions_unwrapping(broker: Broker) -> None:
    key_id = broker.new_key()
    client = broker.client()
    old = client.generate_data_key(key_id)
    info = broker.admin().rotate_key(key_id)
    assert info["current_version"] == 2
    assert info["versions"] == [1, 2]
    new = client.generate_data_key(key_id)
    assert envelope.wrapped_version(old.wrapped) == 1
    assert envelope.wrapped_version(new.wrapped) == 2
    assert client.unwrap_data_key(key_id, old.wrapped) == old.plaintext
    assert client.unwrap_data_key(key_id, new.wrapped) == new.plaintext


def test_deleted_key_no_longer_unwraps(broker: Broker) -> None:
    key_id = broker.new_key()
    client = broker.client()
    data_key = client.generate_data_key(key_id)
    broker.admin().delete_key(key_id)
    with pytest.raises(BrokerKeyNotFoundError):
        client.unwrap_data_key(key_id, data_key.wrapped)


def test_policy_change_applies_to_open_sessions(broker: Broker) -> None:
    key_id = broker.new_key()
    client = broker.client()
    data_key = client.generate_data_key(key_id)
    broker.admin().set_policy(key_id, sim_policy(OTHER_MEASUREMENT))
    with pytest.raises(BrokerRefusedError) as info:
        client.unwrap_data_key(key_id, data_key.wrapped)
    assert info.value.code == "policy_refused"
    broker.admin().set_policy(key_id, sim_policy(MEASUREMENT))
    assert client.unwrap_data_key(key_id, data_key.wrapped) == data_key.plaintext


def test_job_measurement_is_bound_and_matched(broker: Broker) -> None:
    job = bytes.fromhex("ab" * 32)
    policy = {
        "allow_simulated": True,
        "allow": [{"type": "sim", "measurement": MEASUREMENT.hex(), "job_measurement": job.hex()}],
    }
    key_id = broker.new_key(policy)
    assert broker.client(job_measurement=job).generate_data_key(key_id)
    with pytest.raises(BrokerRefusedError, match="job_measurement"):
        broker.client(job_measurement=bytes(32)).generate_data_key(key_id)
    with pytest.raises(BrokerRefusedError):
        broker.client().generate_data_key(key_id)
    # Claiming a job measurement the evidence does not bind fails the binding.
    peer = RawPeer(broker, job_measurement=job)
    body = peer.attest_body(peer.challenge(), [key_id])
    body["job_measurement"] = "cd" * 32
    assert peer.http.post("/v1/attest", json=body).json()["error"] == "binding_mismatch"


def test_bad_wrapped_keys_are_400(broker: Broker) -> None:
    key_id, other = broker.new_key(), broker.new_key()
    client = broker.client()
    wrapped = client.generate_data_key(key_id).wrapped
    tampered = bytearray(wrapped)
    tampered[-1] ^= 1
    for bad in (bytes(tampered), b"\x01" + wrapped[1:], b"junk"):
        with pytest.raises(BrokerRefusedError) as info:
            client.unwrap_data_key(key_id, bad)
        assert (info.value.status, info.value.code) == (400, "bad_wrapped_key")
    with pytest.raises(BrokerRefusedError) as info:
        client.unwrap_data_key(other, wrapped)
    assert info.value.status == 400
    unknown_version = wrapped[:1] + (9).to_bytes(4, "big") + wrapped[5:]
    with pytest.raises(BrokerKeyNotFoundError, match="no version 9"):
        client.unwrap_data_key(key_id, unknown_version)


def test_the_response_is_sealed_to_the_request(broker: Broker) -> None:
    key_id = broker.new_key()
    peer = RawPeer(broker)
    peer.attest([key_id])
    response, request_id = peer.release("datakey", key_id)
    doc = response.json()
    assert response.headers["cache-control"] == "no-store"
    assert unb64(doc["request_id"]) == request_id
    dek = peer.open("datakey", key_id, response, request_id)
    # The same bytes under another request id do not open.
    with pytest.raises(IntegrityError):
        peer.open("datakey", key_id, response, os.urandom(16))
    unwrapped, unwrap_id = peer.release("unwrap", key_id, wrapped=unb64(doc["wrapped"]))
    assert peer.open("unwrap", key_id, unwrapped, unwrap_id) == dek


# -- the broker as a key store -----------------------------------------------------------


def test_files_encrypted_through_the_broker_decrypt_through_it(
    broker: Broker, tmp_path: Path
) -> None:
    key_id = broker.new_key()
    source = tmp_path / "plain.txt"
    source.write_bytes(os.urandom(100_000))
    encrypt_file(source, tmp_path / "x.tml", key_id=key_id, keystore=broker.client(), log2_chunk=12)
    out = tmp_path / "out.txt"
    decrypt_file(tmp_path / "x.tml", out, keystore=broker.client())
    assert out.read_bytes() == source.read_bytes()
    with pytest.raises(BrokerRefusedError):
        decrypt_file(
            tmp_path / "x.tml", tmp_path / "no.txt", keystore=broker.client(OTHER_MEASUREMENT)
        )
    assert not (tmp_path / "no.txt").exists()


def test_client_refuses_plain_http_urls_and_hides_secrets(broker: Broker) -> None:
    from trustedml.broker import KeyBrokerClient
    from trustedml.errors import ConfigError

    with pytest.raises(ConfigError, match="TLS only"):
        KeyBrokerClient("http://127.0.0.1:1", provider=broker.provider())
    client = broker.client()
    client.generate_data_key(broker.new_key())
    assert client._session is not None
    assert client._session.token not in repr(client._session)
    assert broker.config.admin_token.reveal_text() not in repr(broker.config)
    assert isinstance(broker.config.admin_token, Secret)


# -- sharing a session with the job's other processes (Spark workers) -------------------


def test_for_workers_is_a_picklable_key_store_sharing_the_session(broker: Broker) -> None:
    import pickle

    from trustedml.broker import BrokerSession

    key_id, other = broker.new_key(), broker.new_key()
    client = broker.client()
    data_key = client.generate_data_key(key_id)
    shared = client.for_workers()
    broker.clients.append(shared)
    assert isinstance(shared, BrokerSession)
    assert isinstance(shared, KeyStore)
    assert client._session is not None
    assert client._session.token not in repr(shared)
    copy = pickle.loads(pickle.dumps(shared))  # noqa: S301 - our own bytes
    broker.clients.append(copy)
    assert copy == shared
    assert copy.unwrap_data_key(key_id, data_key.wrapped) == data_key.plaintext
    fresh = copy.generate_data_key(key_id)
    assert client.unwrap_data_key(key_id, fresh.wrapped) == fresh.plaintext
    with pytest.raises(BrokerRefusedError) as info:
        copy.generate_data_key(other)  # not attested for: workers cannot attest
    assert info.value.code == "not_in_scope"
    again = client.for_workers([other])
    broker.clients.append(again)
    assert again != shared  # attested again, for both keys


def test_worker_session_in_another_process(broker: Broker, tmp_path: Path) -> None:
    import pickle
    import subprocess
    import sys

    key_id = broker.new_key()
    client = broker.client()
    data_key = client.generate_data_key(key_id)
    shared = client.for_workers()
    broker.clients.append(shared)
    (tmp_path / "session.pickle").write_bytes(pickle.dumps(shared))
    (tmp_path / "wrapped").write_bytes(data_key.wrapped)
    script = (
        "import pickle, sys\n"
        "from pathlib import Path\n"
        "d = Path(sys.argv[1])\n"
        "store = pickle.loads((d / 'session.pickle').read_bytes())\n"
        f"key = store.unwrap_data_key({key_id!r}, (d / 'wrapped').read_bytes())\n"
        "sys.stdout.write(key.reveal().hex())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == data_key.plaintext.reveal().hex()


def test_worker_session_refuses_after_expiry(fresh_broker: Broker) -> None:
    key_id = fresh_broker.new_key()
    client = fresh_broker.client()
    data_key = client.generate_data_key(key_id)
    shared = client.for_workers()
    fresh_broker.clients.append(shared)
    fresh_broker.clock.advance(fresh_broker.config.token_ttl + 1)
    with pytest.raises(BrokerRefusedError) as info:
        shared.unwrap_data_key(key_id, data_key.wrapped)
    assert info.value.code == "token_expired"
    # The attesting client renews its own session.
    assert client.unwrap_data_key(key_id, data_key.wrapped) == data_key.plaintext


# -- real hardware evidence goes through the same path ------------------------------------

VECTORS = ROOT / "tests" / "attestation" / "vectors" / "dcap-qvl"


def test_real_tdx_quote_is_verified_then_refused_for_its_binding(fresh_broker: Broker) -> None:
    """A genuine TDX quote verifies (at a time its collateral is valid) but its
    report_data binds someone else's nonce and key: refused, with MRTD in the audit."""
    import datetime as dt

    mrtd = (
        "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3"
        "520c942a604a407de03ae6dc5f87f27428b2538873118b7"
    )
    key_id = fresh_broker.new_key({"allow": [{"type": "tdx-dcap", "mrtd": mrtd}]})
    peer = RawPeer(fresh_broker)
    body = peer.attest_body(peer.challenge(), [key_id])
    body["evidence"] = b64((VECTORS / "tdx_quote").read_bytes())
    body["collateral"] = b64((VECTORS / "tdx_quote_collateral.json").read_bytes())
    # Today the collateral has expired: verification fails.
    assert peer.http.post("/v1/attest", json=body).json()["error"] == "attestation_failed"
    fresh_broker.clock.now = dt.datetime(2025, 7, 4, 10, 16, 31, tzinfo=dt.UTC).timestamp()
    body["nonce"] = b64(peer.challenge())
    response = peer.http.post("/v1/attest", json=body)
    assert (response.status_code, response.json()["error"]) == (403, "binding_mismatch")
    last = fresh_broker.admin().audit(limit=1000)["entries"][-1]
    assert last["event"] == "attest"
    assert last["measurement"] == mrtd
    assert last["details"]["evidence_type"] == "tdx-dcap"
