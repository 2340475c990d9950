"""The release decision's steps one at a time, for the refusals the HTTP tests cannot
reach cheaply: a wrapped key naming a version the key lacks, a policy changed under a
live session, every key's reasons in one refusal, a store that fails while recording.
Real sim evidence, real crypto, a real SQLite store."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.broker.conftest import MEASUREMENT, OTHER_MEASUREMENT, sim_policy
from trustedml.attestation import Policy, SimKey, SimProvider, VerifiedEvidence, verify_evidence
from trustedml.broker import SQLiteStore
from trustedml.broker._audit import AuditChain
from trustedml.broker._errors import Refusal
from trustedml.broker._keys import Key
from trustedml.broker._ledger import Decision, Ledger
from trustedml.broker._master import MasterKey
from trustedml.broker._release import appraise, new_data_key, releasable, unwrap_data_key
from trustedml.broker._sessions import Session
from trustedml.broker._writer import GroupCommitWriter
from trustedml.errors import KeyBrokerError, TrustedMLError
from trustedml.hazmat import envelope

NOW = time.time()
AT = dt.datetime.fromtimestamp(NOW, dt.UTC)
REPORT_DATA = bytes(range(64))


def make_key(
    key_id: str = "k1",
    *,
    versions: tuple[int, ...] = (1,),
    policy: Policy | None = None,
    revision: int = 1,
    state: str = "enabled",
) -> Key:
    key = Key(key_id, state, max(versions), None, None, revision, "t", "t")
    key.set_policy(policy)
    key.keks.update({v: os.urandom(32) for v in versions})
    return key


def allow(measurement: bytes) -> Policy:
    return Policy.from_dict(sim_policy(measurement))


@pytest.fixture(scope="module")
def verified() -> VerifiedEvidence:
    """Sim evidence for MEASUREMENT, verified as the broker verifies it."""
    sim = SimKey.generate()
    evidence = SimProvider(sim, measurement=MEASUREMENT).get_evidence(REPORT_DATA)
    return verify_evidence(evidence, at=AT, sim_keys=(sim.public_key_pem(),))


def session_for(verified: VerifiedEvidence, revisions: dict[str, int]) -> Session:
    return Session(
        token_sha256=os.urandom(32),
        client_public_key=os.urandom(envelope.PUBLIC_KEY_SIZE),
        key_ids=frozenset(revisions),
        expires=NOW + 300,
        verified=verified,
        measurement=MEASUREMENT.hex(),
        evidence_type="sim",
        revisions=revisions,
        session_key=AESGCM(os.urandom(envelope.SESSION_KEY_SIZE)),
    )


def test_a_refusal_is_a_broker_error() -> None:
    refusal = Refusal(403, "policy_refused", "no", ["a", "b"])
    assert isinstance(refusal, KeyBrokerError)
    assert isinstance(refusal, TrustedMLError)
    assert refusal.to_dict() == {"error": "policy_refused", "message": "no", "reasons": ["a", "b"]}


# -- data keys -------------------------------------------------------------------------


def test_a_new_data_key_unwraps_to_itself() -> None:
    key = make_key(versions=(1, 2))
    version, dek, wrapped = new_data_key(key)
    assert version == 2
    assert unwrap_data_key(key, wrapped) == (2, dek)


def test_a_wrapped_key_naming_a_version_the_key_lacks_is_a_404() -> None:
    key = make_key(versions=(1,))
    wrapped = envelope.wrap_versioned(os.urandom(32), "k1", 2, os.urandom(32))
    with pytest.raises(Refusal) as caught:
        unwrap_data_key(key, wrapped)
    assert (caught.value.status, caught.value.code) == (404, "unknown_key_version")
    assert caught.value.message == "key 'k1' has no version 2"


def test_a_wrapped_key_of_another_key_is_a_400() -> None:
    key = make_key(versions=(1,))
    wrapped = envelope.wrap_versioned(key.keks[1], "k2", 1, os.urandom(32))
    with pytest.raises(Refusal) as caught:
        unwrap_data_key(key, wrapped)
    assert (caught.value.status, caught.value.code) == (400, "bad_wrapped_key")
    assert "does not unwrap under key 'k1' version 1" in caught.value.message
    with pytest.raises(Refusal, match="not a key broker wrapped key") as garbage:
        unwrap_data_key(key, b"\x01" * 66)
    assert garbage.value.code == "bad_wrapped_key"


# -- a policy changed under a session --------------------------------------------------


def test_a_policy_changed_since_attestation_is_appraised_again(
    verified: VerifiedEvidence,
) -> None:
    session = session_for(verified, {"k1": 1})
    key = make_key(policy=allow(OTHER_MEASUREMENT), revision=2)
    with pytest.raises(Refusal) as caught:
        releasable({"k1": key}, "k1", session, NOW, "unwrap")
    refusal = caught.value
    assert (refusal.status, refusal.code) == (403, "policy_refused")
    assert refusal.message == "the session's evidence does not satisfy the key's current policy"
    assert any(OTHER_MEASUREMENT.hex()[:8] in r for r in refusal.reasons), refusal.reasons
    assert session.revisions == {"k1": 1}  # not accepted: appraised again next time

    key.set_policy(allow(MEASUREMENT))
    key.policy_revision = 3
    assert releasable({"k1": key}, "k1", session, NOW, "unwrap") is key
    assert session.revisions == {"k1": 3}


def test_an_unchanged_policy_is_not_appraised_again(verified: VerifiedEvidence) -> None:
    # The session was appraised under revision 1; a policy that would now refuse but
    # has the same revision is not consulted (the revision is what says it changed).
    session = session_for(verified, {"k1": 1})
    key = make_key(policy=allow(OTHER_MEASUREMENT), revision=1)
    assert releasable({"k1": key}, "k1", session, NOW, "datakey") is key


def test_attestation_lists_every_keys_reasons(verified: VerifiedEvidence) -> None:
    keys = [
        make_key("a", state="disabled", policy=allow(MEASUREMENT)),
        make_key("b"),
        make_key("c", policy=allow(OTHER_MEASUREMENT)),
        make_key("d", policy=allow(MEASUREMENT), revision=7),
    ]
    with pytest.raises(Refusal) as caught:
        appraise(keys, verified, AT, REPORT_DATA)
    reasons = caught.value.reasons
    assert caught.value.code == "policy_refused"
    assert reasons[:2] == ("key 'a' is disabled", "key 'b' has no release policy")
    assert reasons[2].startswith("key 'c': ")
    assert not any(r.startswith("key 'd'") for r in reasons)
    assert appraise(keys[3:], verified, AT, REPORT_DATA) == {"d": 7}


# -- recording decisions ---------------------------------------------------------------


def test_a_refusal_is_recorded_before_it_is_answered(tmp_path: Path) -> None:
    master = MasterKey(MasterKey.generate())
    store = SQLiteStore(tmp_path / "broker.db")
    store.initialize(master.check_value)
    ledger = Ledger(time.time)
    ledger.chain = AuditChain(master.audit_key, None)
    ledger.writer = GroupCommitWriter(store, head_of=ledger.chain.head_of)
    ledger.writer.start()
    try:
        decision = Decision("unwrap", "10.0.0.1", "k1", details={"session": "ab"})
        answer = asyncio.run(ledger.refused(decision, Refusal(403, "key_disabled", "off")))
        assert answer.to_dict() == {"error": "key_disabled", "message": "off", "reasons": ["off"]}
        entries, _ = store.audit_snapshot()
        assert [(e.event, e.outcome, e.key_id, e.client) for e in entries] == [
            ("unwrap", "refused", "k1", "10.0.0.1")
        ]
        assert entries[0].reasons == ("off",)
        assert entries[0].details == {"status": 403, "code": "key_disabled", "session": "ab"}

        store.close()  # the database goes away under the writer
        with pytest.raises(Refusal) as caught:
            asyncio.run(ledger.ok(Decision("challenge", "10.0.0.1")))
        assert (caught.value.status, caught.value.code) == (503, "store_failed")
        with pytest.raises(Refusal, match="could not record"):  # and stays failed
            asyncio.run(ledger.ok(Decision("challenge", "10.0.0.1")))
    finally:
        ledger.writer.close()
        store.close()
    ledger.writer = None
    with pytest.raises(Refusal) as closed:
        asyncio.run(ledger.ok(Decision("challenge", "10.0.0.1")))
    assert (closed.value.status, closed.value.code) == (503, "unavailable")


def test_a_tampered_key_is_refused_without_its_keks() -> None:
    key = make_key(versions=(1,))
    key.problems.append("its MAC does not verify")
    refusal = key.tampered("unwrap")
    assert (refusal.status, refusal.code) == (403, "key_integrity")
    assert refusal.reasons[-1] == "key 'k1': its MAC does not verify"
    assert key.keks[1].hex() not in repr(refusal) + str(refusal.to_dict())
