"""The release decision (docs/broker-protocol.md): a challenge, then attestation
(evidence verification, the report_data binding, each key's policy, a session), then
data keys for the session. Each step below returns what the next needs or raises one
:class:`Refusal`; :class:`KeyRelease` runs them in order and audits every refusal."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import anyio.to_thread

from trustedml.attestation import VerifiedEvidence, verify_evidence
from trustedml.broker._config import BrokerConfig
from trustedml.broker._errors import Refusal
from trustedml.broker._keys import Key
from trustedml.broker._ledger import Decision, Ledger
from trustedml.broker._messages import (
    AttestRequest,
    attest_answer,
    bearer,
    challenge_answer,
    parse_attest,
    parse_release,
    release_answer,
)
from trustedml.broker._sessions import Session, Sessions, new_session
from trustedml.errors import EvidenceFormatError, IntegrityError, TrustedMLError
from trustedml.hazmat import envelope

log = logging.getLogger("trustedml.broker")

DEK_SIZE = 32


def _utc(now: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(now, dt.UTC)


# -- attestation steps -----------------------------------------------------------------


async def verify(
    request: AttestRequest, at: dt.datetime, sim_keys: tuple[bytes, ...]
) -> VerifiedEvidence:
    """The verified evidence (in a worker thread: verification is CPU-bound).
    Malformed evidence is a 400, evidence that does not verify a 403."""
    try:
        return await anyio.to_thread.run_sync(
            functools.partial(
                verify_evidence,
                request.evidence,
                collateral=request.collateral,
                at=at,
                sim_keys=sim_keys,
            )
        )
    except EvidenceFormatError as exc:
        raise Refusal(400, "bad_evidence", f"evidence is malformed: {exc}") from exc
    except TrustedMLError as exc:
        raise Refusal(403, "attestation_failed", f"evidence does not verify: {exc}") from exc
    except Exception as exc:  # evidence is hostile input: a verifier bug is still a 4xx
        log.warning("evidence verification crashed", exc_info=True)
        raise Refusal(
            400, "bad_evidence", f"evidence could not be parsed ({type(exc).__name__})"
        ) from exc


def measurement_of(verified: VerifiedEvidence) -> str | None:
    """The launch measurement that identifies the workload: sim/SNP measurement, SGX
    MRENCLAVE or TDX MRTD (hex)."""
    claims = verified.claims
    for value in (claims.measurement, claims.mrenclave, claims.mrtd):
        if value:
            return value.hex()
    return None


def check_binding(verified: VerifiedEvidence, expected: bytes) -> None:
    """The evidence's report_data must be ``expected``: it binds the nonce, the client
    key and the job measurement."""
    if not hmac.compare_digest(verified.claims.report_data, expected):
        raise Refusal(
            403,
            "binding_mismatch",
            "report_data does not bind the nonce, the client public key and the job "
            "measurement (SHA-512 binding of docs/broker-protocol.md)",
        )


def with_job_measurement(verified: VerifiedEvidence, job: bytes) -> VerifiedEvidence:
    """The evidence with the (now bound) job measurement among its claims, where a
    policy's ``job_measurement`` rule reads it."""
    claims = dataclasses.replace(
        verified.claims, extra={**verified.claims.extra, "job_measurement": job.hex()}
    )
    return dataclasses.replace(verified, claims=claims)


def keys_to_attest(keys: Mapping[str, Key], key_ids: list[str], event: str) -> list[Key]:
    """The keys asked for: all must exist and verify."""
    unknown = [k for k in key_ids if k not in keys]
    if unknown:
        raise Refusal(404, "unknown_key", f"no key {', '.join(map(repr, unknown))} in this broker")
    for key_id in key_ids:
        if keys[key_id].problems:
            raise keys[key_id].tampered(event)
    return [keys[k] for k in key_ids]


def appraise(
    keys: list[Key], verified: VerifiedEvidence, at: dt.datetime, expected: bytes
) -> dict[str, int]:
    """Every key enabled, with a policy the evidence satisfies; the policy revision
    each was appraised under. The refusal lists every reason of every key."""
    reasons: list[str] = []
    revisions: dict[str, int] = {}
    for key in keys:
        if key.state != "enabled":
            reasons.append(f"key {key.key_id!r} is disabled")
        elif key.policy is None:
            reasons.append(f"key {key.key_id!r} has no release policy")
        else:
            appraisal = key.policy.appraise(verified, at=at, expected_report_data=expected)
            reasons.extend(f"key {key.key_id!r}: {r}" for r in appraisal.reasons)
            revisions[key.key_id] = key.policy_revision
    if reasons:
        raise Refusal(
            403, "policy_refused", "the evidence does not satisfy the key policy", reasons
        )
    return revisions


# -- release steps ---------------------------------------------------------------------


def check_client_key(session: Session, client_public_key: bytes) -> None:
    """A token works only with the client key pair it was issued to."""
    if not hmac.compare_digest(session.client_public_key, client_public_key):
        raise Refusal(401, "key_mismatch", "the session token is bound to another client key pair")


def releasable(
    keys: Mapping[str, Key], key_id: str, session: Session, now: float, event: str
) -> Key:
    """The key, if ``session`` may have its data keys now: it exists, verifies, is
    enabled, is in the session's scope and has a policy. A policy changed since the
    session was appraised is appraised again (and the session remembers the result)."""
    key = keys.get(key_id)
    if key is None:
        raise Refusal(404, "unknown_key", f"no key {key_id!r}")
    if key.problems:
        raise key.tampered(event)
    if key.state != "enabled":
        raise Refusal(403, "key_disabled", f"key {key_id!r} is disabled")
    if key_id not in session.key_ids:
        raise Refusal(
            403,
            "not_in_scope",
            f"the session was not attested for key {key_id!r}; attest with it in key_ids",
        )
    if key.policy is None:
        raise Refusal(403, "policy_refused", f"key {key_id!r} has no release policy")
    if session.revisions.get(key_id) != key.policy_revision:
        appraisal = key.policy.appraise(session.verified, at=_utc(now))
        if not appraisal.accepted:
            raise Refusal(
                403,
                "policy_refused",
                "the session's evidence does not satisfy the key's current policy",
                appraisal.reasons,
            )
        session.revisions[key_id] = key.policy_revision
    return key


def new_data_key(key: Key) -> tuple[int, bytes, bytes]:
    """A fresh data key under the key's current version: (version, key, wrapped key)."""
    version = key.current_version
    dek = os.urandom(DEK_SIZE)
    return version, dek, envelope.wrap_versioned(key.keks[version], key.key_id, version, dek)


def unwrap_data_key(key: Key, wrapped: bytes) -> tuple[int, bytes]:
    """The data key a wrapped key holds, and the version of ``key`` that wrapped it."""
    try:
        version = envelope.wrapped_version(wrapped)
    except IntegrityError as exc:
        raise Refusal(400, "bad_wrapped_key", str(exc)) from exc
    kek = key.keks.get(version)
    if kek is None:
        raise Refusal(404, "unknown_key_version", f"key {key.key_id!r} has no version {version}")
    try:
        return version, envelope.unwrap_versioned(kek, key.key_id, wrapped)
    except IntegrityError as exc:
        raise Refusal(
            400,
            "bad_wrapped_key",
            f"the wrapped key does not unwrap under key {key.key_id!r} version {version} "
            "(another key, or it was modified)",
        ) from exc


# -- the protocol ----------------------------------------------------------------------


class KeyRelease:
    """Challenge, attest, datakey/unwrap: the steps above in order, on the event loop."""

    def __init__(
        self,
        config: BrokerConfig,
        keys: Mapping[str, Key],
        sessions: Sessions,
        ledger: Ledger,
        clock: Callable[[], float],
    ) -> None:
        self._config = config
        self._keys = keys
        self._sessions = sessions
        self._ledger = ledger
        self._clock = clock

    async def challenge(self, client: str) -> dict[str, Any]:
        now = self._clock()
        self._sessions.purge(now)
        nonce, expires = self._sessions.issue_nonce(client, now)
        digest = hashlib.sha256(nonce).hexdigest()[:32]
        await self._ledger.ok(Decision("challenge", client, details={"nonce_sha256": digest}))
        return challenge_answer(nonce, expires, self._config.challenge_ttl)

    async def attest(self, client: str, body: bytes) -> dict[str, Any]:
        request = parse_attest(body, self._config.max_attest_body)
        details: dict[str, Any] = {"key_ids": request.key_ids}
        if request.worker is not None:
            details["worker"] = request.worker
        decision = Decision("attest", client, request.audit_key, details=details)
        now = self._clock()
        self._sessions.purge(now)
        try:
            verified, revisions = await self._appraise(request, decision, now)
        except Refusal as refusal:
            raise await self._ledger.refused(decision, refusal) from None
        opened = new_session(
            request.nonce,
            request.client_public_key,
            request.key_ids,
            verified,
            decision.measurement,
            revisions,
            now + self._config.token_ttl,
        )
        session = opened.session
        decision.details["session"] = session.session_id
        await self._ledger.ok(decision)
        self._sessions.add(session)
        log.info(
            "attestation accepted",
            extra={
                "client": client,
                "key_ids": request.key_ids,
                "measurement": session.measurement,
            },
        )
        return attest_answer(opened, request.key_ids, now)

    async def _appraise(
        self, request: AttestRequest, decision: Decision, now: float
    ) -> tuple[VerifiedEvidence, dict[str, int]]:
        """Nonce, evidence, binding, keys, policies: the verified evidence (with the
        job measurement among its claims) and the revision of each appraised policy."""
        self._sessions.redeem_nonce(request.nonce, now)
        at = _utc(now)
        verified = await verify(request, at, self._config.trusted_sim_keys)
        decision.measurement = measurement_of(verified)
        decision.details["evidence_type"] = verified.evidence_type.value
        expected = envelope.report_data(
            request.nonce, request.client_public_key, request.job_measurement
        )
        check_binding(verified, expected)
        if request.job_measurement is not None:
            verified = with_job_measurement(verified, request.job_measurement)
            decision.details["job_measurement"] = request.job_measurement.hex()
        keys = keys_to_attest(self._keys, request.key_ids, decision.event)
        return verified, appraise(keys, verified, at, expected)

    async def release(
        self, operation: str, client: str, key_id: str, authorization: str | None, body: bytes
    ) -> dict[str, Any]:
        """``operation`` is "datakey" or "unwrap"."""
        request = parse_release(operation, key_id, body)
        decision = Decision(operation, client, key_id)
        now = self._clock()
        self._sessions.purge(now)
        try:
            session = self._sessions.find(bearer(authorization))
            decision.measurement = session.measurement
            decision.details["session"] = session.session_id
            self._sessions.check_live(session, now)
            check_client_key(session, request.client_public_key)
            key = releasable(self._keys, key_id, session, now, operation)
            if operation == "datakey":
                version, dek, wrapped = new_data_key(key)
            else:
                wrapped = request.wrapped
                version, dek = unwrap_data_key(key, wrapped)
        except Refusal as refusal:
            raise await self._ledger.refused(decision, refusal) from None
        info = envelope.envelope_info(
            operation, key_id, version, request.request_id, session.token_sha256
        )
        sealed = envelope.seal_data_key(session.session_key, dek, info, session.next_iv())
        decision.details["version"] = version
        await self._ledger.ok(decision)
        return release_answer(request, version, sealed, wrapped)
