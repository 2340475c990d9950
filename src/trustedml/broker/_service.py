"""The broker's decisions, independent of HTTP: challenges, attestation, key release,
key administration and the audit record of each.

Runs on one asyncio event loop. The in-memory state (keys, nonces, sessions, audit
chain head) changes only on that loop, between awaits, and every change to the
database is queued to the group-commit writer in the same order, so memory and disk
never disagree about order. A response that depends on a write is sent only after
that write (and its audit entry) is on disk.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import anyio.to_thread
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustedml._version import __version__
from trustedml.attestation import Policy, VerifiedEvidence, verify_evidence
from trustedml.broker._audit import AuditChain, AuditEntry, AuditHead, utc_timestamp
from trustedml.broker._check import Sealer, check_state
from trustedml.broker._config import BrokerConfig
from trustedml.broker._integrity import key_row_mac, version_row_mac
from trustedml.broker._master import MasterKey, kek_aad_name
from trustedml.broker._store import (
    AppendAudit,
    BrokerStore,
    DeleteKey,
    KeyRow,
    PutKey,
    PutVersion,
    StoreOp,
    VersionRow,
    open_store,
)
from trustedml.broker._wire import WireFormatError, loads_object
from trustedml.broker._writer import GroupCommitWriter
from trustedml.data import KEY_ID_PATTERN
from trustedml.errors import (
    ConfigError,
    EvidenceFormatError,
    IntegrityError,
    PolicyError,
    TrustedMLError,
)
from trustedml.hazmat import envelope, keywrap

log = logging.getLogger("trustedml.broker")

DEK_SIZE = 32
MAX_KEY_IDS = 64
MAX_WRAPPED = 1024
_HEX = re.compile(r"[0-9a-fA-F]*")  # fullmatch: `$` would let a trailing newline in
_PURGE_EVERY = 1.0


class Refusal(Exception):
    """A request the broker turns down: HTTP ``status``, an error ``code`` from
    docs/broker-protocol.md, a message, and every reason."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        reasons: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reasons = tuple(reasons)
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "reasons": list(self.reasons)}


def bad_request(message: str) -> Refusal:
    return Refusal(400, "bad_request", message, [message])


# -- request parsing -------------------------------------------------------------------


def parse_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, within the wire limits (broker/_wire.py)."""
    try:
        return loads_object(body)
    except WireFormatError as exc:
        raise bad_request(str(exc)) from None


def _b64(
    doc: Mapping[str, Any],
    name: str,
    *,
    size: int | None = None,
    max_size: int | None = None,
    required: bool = True,
) -> bytes | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise bad_request(f"{name}: required (base64)")
        return None
    if not isinstance(value, str):
        raise bad_request(f"{name}: expected a base64 string, got {type(value).__name__}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{name}: not valid base64") from None
    if size is not None and len(raw) != size:
        raise bad_request(f"{name}: expected {size} bytes, got {len(raw)}")
    if max_size is not None and len(raw) > max_size:
        raise bad_request(f"{name}: expected at most {max_size} bytes, got {len(raw)}")
    if not raw:
        raise bad_request(f"{name}: must not be empty")
    return raw


def _required_b64(doc: Mapping[str, Any], name: str, **kwargs: Any) -> bytes:
    raw = _b64(doc, name, **kwargs)
    assert raw is not None
    return raw


def check_key_id(key_id: object, what: str = "key id") -> str:
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
        shown = key_id if isinstance(key_id, str) else type(key_id).__name__
        raise bad_request(
            f"{what}: expected 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter "
            f"or digit, got {shown!r}"[:300]
        )
    return key_id


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def measurement_of(verified: VerifiedEvidence) -> str | None:
    """The launch measurement that identifies the workload: sim/SNP measurement, SGX
    MRENCLAVE or TDX MRTD (hex)."""
    claims = verified.claims
    for value in (claims.measurement, claims.mrenclave, claims.mrtd):
        if value:
            return value.hex()
    return None


# -- state -----------------------------------------------------------------------------


@dataclass
class _Key:
    key_id: str
    state: str
    current_version: int
    policy: Policy | None
    policy_json: str | None
    policy_revision: int
    created_at: str
    updated_at: str
    keks: dict[int, bytes] = field(default_factory=dict, repr=False)
    row_seq: int = 0
    mac: str = ""
    version_macs: dict[int, str] = field(default_factory=dict)
    # Why the stored row does not verify: the key is never released (docs: Integrity).
    problems: list[str] = field(default_factory=list)

    def row(self) -> KeyRow:
        return KeyRow(
            self.key_id,
            self.state,
            self.current_version,
            self.policy_json,
            self.policy_revision,
            self.created_at,
            self.updated_at,
            self.row_seq,
            self.mac,
        )

    def sealed_row(self, row_key: bytes, seq: int) -> KeyRow:
        """The row as written by the audit entry ``seq``, with its MAC."""
        self.row_seq = seq
        self.mac = key_row_mac(row_key, self.row(), self.version_macs)
        return self.row()

    def info(self) -> dict[str, Any]:
        out = {
            "key_id": self.key_id,
            "state": self.state,
            "current_version": self.current_version,
            "versions": sorted(self.keks),
            "policy": self.policy.to_dict() if self.policy else None,
            "policy_revision": self.policy_revision,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if self.problems:
            out["integrity_problems"] = list(self.problems)
        return out


@dataclass
class _Session:
    token_sha256: bytes
    client_public_key: bytes
    key_ids: frozenset[str]
    expires: float
    verified: VerifiedEvidence
    measurement: str | None
    evidence_type: str
    revisions: dict[str, int]  # policy revision each key was appraised under
    session_key: AESGCM = field(repr=False)  # seals the data keys released in the session
    sealed: int = 0  # data keys sealed so far: the next one's IV

    def next_iv(self) -> bytes:
        self.sealed += 1
        return self.sealed.to_bytes(envelope.IV_SIZE, "big")

    @property
    def session_id(self) -> str:
        return self.token_sha256[:8].hex()


@dataclass
class _Bucket:
    tokens: float
    last: float
    limited: bool = False


class BrokerService:
    """Everything the broker decides. HTTP lives in :mod:`trustedml.broker._app`."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        store: BrokerStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._master = MasterKey(config.master_key)
        self._store = store if store is not None else open_store(config.db)
        self._clock = clock
        self._keys: dict[str, _Key] = {}
        self._nonces: dict[bytes, float] = {}  # nonce -> expiry
        self._spent: dict[bytes, float] = {}  # used nonce -> its expiry
        self._sessions: dict[bytes, _Session] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._next_purge = 0.0
        self._admin_digest = hashlib.sha256(config.admin_token.reveal()).digest()
        self._chain: AuditChain | None = None
        self._writer: GroupCommitWriter | None = None
        self.opened = False

    def __repr__(self) -> str:
        return f"BrokerService(store={self._store!r}, keys={len(self._keys)})"

    # -- life cycle --------------------------------------------------------------------

    def open(self) -> None:
        """Check and load the store, start the writer. Idempotent."""
        if self.opened:
            return
        try:
            self._store.initialize(self._master.check_value)
            state = self._store.state()
            check = check_state(state, self._master)
            if check.problems:
                raise IntegrityError(
                    f"{self.config.db}: the broker's store does not verify: "
                    + "; ".join(check.problems)
                    + " (`trustedml broker audit verify` reports everything)"
                )
            self._keys = self._load_keys(state.keys, state.versions, check.keys)
            self._chain = AuditChain(self._master.audit_key, state.audit_head)
        except BaseException:
            self._store.close()
            raise
        sealer = Sealer(self._master, check.index, state.audit_head)
        self._writer = GroupCommitWriter(self._store, sealer=sealer)
        self._writer.start()
        self.opened = True
        ops = [
            AppendAudit(
                self._chain.append(
                    time=self._clock(),
                    event="broker.start",
                    outcome="ok",
                    details={"version": __version__, "keys": len(self._keys)},
                )
            )
        ]
        for key_id, problems in [*sorted(check.keys.items()), *((k, []) for k in check.missing)]:
            reasons = problems or ["its row was deleted (the sealed key index still names it)"]
            # No secret here: which key, and which check failed.
            log.warning("key %r does not verify: %s", key_id, "; ".join(reasons))
            ops.append(self._audit("key.integrity", "refused", key_id=key_id, reasons=reasons))
        self._writer.submit(ops).result()
        log.info("broker store open", extra={"db": self.config.db, "keys": len(self._keys)})

    def _load_keys(
        self,
        rows: Sequence[KeyRow],
        versions: Sequence[VersionRow],
        problems: Mapping[str, list[str]],
    ) -> dict[str, _Key]:
        keys: dict[str, _Key] = {}
        for row in rows:
            bad = list(problems.get(row.key_id, ()))
            policy = None
            if row.policy is not None:
                try:
                    policy = Policy.from_dict(json.loads(row.policy))
                except (ValueError, PolicyError, ConfigError, TypeError) as exc:
                    if not bad:  # a row that verifies holds what the broker wrote
                        raise ConfigError(
                            f"stored policy of key {row.key_id!r} is invalid: {exc}"
                        ) from None
            keys[row.key_id] = _Key(
                row.key_id,
                row.state,
                row.current_version,
                policy,
                row.policy,
                row.policy_revision,
                row.created_at,
                row.updated_at,
                row_seq=row.row_seq,
                mac=row.mac,
                problems=bad,
            )
        for v in versions:
            key = keys.get(v.key_id)
            if key is None:
                continue
            key.version_macs[v.version] = v.mac
            try:
                key.keks[v.version] = keywrap.unwrap(
                    self._master.kek_wrapping_key, kek_aad_name(v.key_id, v.version), v.wrapped_kek
                )
            except IntegrityError:
                key.problems.append(
                    f"version {v.version} does not unwrap under the broker master key"
                )
        for key in keys.values():
            if key.current_version not in key.keks and not key.problems:
                key.problems.append(f"lacks its current version {key.current_version}")
        return keys

    def close(self) -> None:
        """Write what is queued and close the store."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.opened:
            self._store.close()
            self.opened = False

    @property
    def store(self) -> BrokerStore:
        return self._store

    # -- helpers -----------------------------------------------------------------------

    def _now_dt(self, now: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(now, dt.UTC)

    def _audit(
        self,
        event: str,
        outcome: str,
        *,
        key_id: str | None = None,
        client: str | None = None,
        measurement: str | None = None,
        reasons: Sequence[str] = (),
        details: Mapping[str, Any] | None = None,
    ) -> AppendAudit:
        assert self._chain is not None, "broker service is not open"
        entry = self._chain.append(
            time=self._clock(),
            event=event,
            outcome=outcome,
            key_id=key_id,
            client=client,
            measurement=measurement,
            reasons=reasons,
            details=details,
        )
        return AppendAudit(entry)

    async def _commit(self, ops: Sequence[StoreOp]) -> None:
        if self._writer is None:
            raise Refusal(503, "unavailable", "the broker is shutting down")
        try:
            await asyncio.wrap_future(self._writer.submit(ops))
        except Exception as exc:
            log.error("store write failed: %s", exc)
            raise Refusal(503, "store_failed", "the broker could not record the decision") from exc

    async def _refuse(
        self,
        status: int,
        code: str,
        message: str,
        *,
        event: str,
        reasons: Sequence[str] = (),
        key_id: str | None = None,
        client: str | None = None,
        measurement: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> NoReturn:
        reasons = tuple(reasons) or (message,)
        await self._commit(
            [
                self._audit(
                    event,
                    "refused",
                    key_id=key_id,
                    client=client,
                    measurement=measurement,
                    reasons=reasons,
                    details={"status": status, "code": code, **(details or {})},
                )
            ]
        )
        log.info(
            "%s refused: %s",
            event,
            message,
            extra={"event": event, "code": code, "key_id": key_id, "client": client},
        )
        raise Refusal(status, code, message, reasons)

    async def _refuse_tampered(
        self,
        key: _Key,
        client: str,
        *,
        event: str = "key.integrity",
        status: int = 403,
        ctx: Mapping[str, Any] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> NoReturn:
        """Refuse ``key``: its stored row does not verify (docs/broker-protocol.md,
        "Integrity"). Logged as a warning and audited, with the failed checks."""
        message = (
            f"key {key.key_id!r} is refused: its stored row does not verify under the "
            "broker master key (the database was modified); an administrator must "
            "delete it or restore the database"
        )
        log.warning(
            "%s refused: key %r does not verify: %s",
            event,
            key.key_id,
            "; ".join(key.problems),
            extra={"event": event, "code": "key_integrity", "key_id": key.key_id},
        )
        fields = dict(ctx or {})
        fields.setdefault("key_id", key.key_id)
        fields["client"] = client
        fields["details"] = {**fields.get("details", {}), **(details or {})}
        await self._refuse(
            status,
            "key_integrity",
            message,
            event=event,
            reasons=[message, *(f"key {key.key_id!r}: {p}" for p in key.problems)],
            **fields,
        )

    def _purge(self, now: float) -> None:
        if now < self._next_purge:
            return
        self._next_purge = now + _PURGE_EVERY
        # Nonces stay one more lifetime after expiry, so a late client hears "expired"
        # (and a replay "already used") rather than "unknown".
        # Lifetimes are fixed, so insertion order is expiry order: drop from the front
        # (a session cut short by its collateral is refused when used, then dropped).
        horizon = now - self.config.challenge_ttl
        for table in (self._nonces, self._spent):
            while table:
                nonce, expires = next(iter(table.items()))
                if expires > horizon:
                    break
                del table[nonce]
        while self._sessions:
            digest, session = next(iter(self._sessions.items()))
            if session.expires > now - self.config.token_ttl:
                break
            del self._sessions[digest]
        if len(self._buckets) > 10_000:
            burst = self.config.challenge_burst
            rate = self.config.challenge_rate
            for client in [
                c for c, b in self._buckets.items() if b.tokens + (now - b.last) * rate >= burst
            ]:
                del self._buckets[client]

    def _take_challenge_token(self, client: str, now: float) -> float | None:
        """Token bucket per client address: None when allowed, else seconds to wait."""
        rate, burst = self.config.challenge_rate, float(self.config.challenge_burst)
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + max(0.0, now - bucket.last) * rate)
        bucket.last = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.limited = False
            return None
        if not bucket.limited:  # once per episode, not once per refused request
            bucket.limited = True
            log.warning("challenge rate limit reached", extra={"client": client})
        return (1.0 - bucket.tokens) / rate

    # -- challenge ---------------------------------------------------------------------

    async def challenge(self, client: str) -> dict[str, Any]:
        now = self._clock()
        self._purge(now)
        wait = self._take_challenge_token(client, now)
        if wait is not None:
            raise Refusal(
                429,
                "rate_limited",
                f"too many challenges from {client}; retry in {wait:.2f} s",
                headers={"Retry-After": str(max(1, int(wait + 0.999)))},
            )
        if len(self._nonces) >= self.config.max_outstanding_challenges:
            raise Refusal(
                503, "busy", "too many outstanding challenges", headers={"Retry-After": "1"}
            )
        nonce = secrets.token_bytes(envelope.NONCE_SIZE)
        expires = now + self.config.challenge_ttl
        self._nonces[nonce] = expires
        await self._commit(
            [
                self._audit(
                    "challenge",
                    "ok",
                    client=client,
                    details={"nonce_sha256": hashlib.sha256(nonce).hexdigest()[:32]},
                )
            ]
        )
        return {
            "nonce": b64(nonce),
            "expires_at": utc_timestamp(expires),
            "expires_in": self.config.challenge_ttl,
        }

    # -- attestation -------------------------------------------------------------------

    async def attest(self, client: str, body: bytes) -> dict[str, Any]:
        doc = parse_object(body)
        nonce = _required_b64(doc, "nonce", size=envelope.NONCE_SIZE)
        evidence = _required_b64(doc, "evidence", max_size=self.config.max_attest_body)
        collateral = _b64(doc, "collateral", required=False, max_size=self.config.max_attest_body)
        client_pk = _required_b64(doc, "client_public_key", size=envelope.PUBLIC_KEY_SIZE)
        job = doc.get("job_measurement")
        job_bytes: bytes | None = None
        if job is not None:
            if (
                not isinstance(job, str)
                or not _HEX.fullmatch(job)
                or len(job) % 2
                or not 2 <= len(job) <= 2 * envelope.MAX_JOB_MEASUREMENT_SIZE
            ):
                raise bad_request(
                    f"job_measurement: expected 1-64 bytes as hex, got {str(job)[:80]!r}"
                )
            job_bytes = bytes.fromhex(job)
        raw_ids = doc.get("key_ids")
        if not isinstance(raw_ids, list) or not 1 <= len(raw_ids) <= MAX_KEY_IDS:
            raise bad_request(f"key_ids: expected a list of 1-{MAX_KEY_IDS} key ids")
        key_ids = sorted({check_key_id(k, "key_ids[]") for k in raw_ids})
        details: dict[str, Any] = {"key_ids": key_ids}
        audit_key = key_ids[0] if len(key_ids) == 1 else None

        now = self._clock()
        self._purge(now)
        expires = self._nonces.pop(nonce, None)
        if expires is None:
            message = (
                "nonce was already used (replay)"
                if nonce in self._spent
                else "unknown nonce: not issued by this broker, or already expired"
            )
            await self._refuse(
                401,
                "bad_nonce",
                message,
                event="attest",
                key_id=audit_key,
                client=client,
                details=details,
            )
        self._spent[nonce] = expires
        if now >= expires:
            await self._refuse(
                401,
                "nonce_expired",
                "nonce expired; ask for a new challenge",
                event="attest",
                key_id=audit_key,
                client=client,
                details=details,
            )

        at = self._now_dt(now)
        try:
            verified = await anyio.to_thread.run_sync(
                functools.partial(
                    verify_evidence,
                    evidence,
                    collateral=collateral,
                    at=at,
                    sim_keys=self.config.trusted_sim_keys,
                )
            )
        except EvidenceFormatError as exc:
            await self._refuse(
                400,
                "bad_evidence",
                f"evidence is malformed: {exc}",
                event="attest",
                key_id=audit_key,
                client=client,
                details=details,
            )
        except TrustedMLError as exc:
            await self._refuse(
                403,
                "attestation_failed",
                f"evidence does not verify: {exc}",
                event="attest",
                key_id=audit_key,
                client=client,
                details=details,
            )
        except Exception as exc:  # evidence is hostile input: a verifier bug is still a 4xx
            log.warning("evidence verification crashed", exc_info=True)
            await self._refuse(
                400,
                "bad_evidence",
                f"evidence could not be parsed ({type(exc).__name__})",
                event="attest",
                key_id=audit_key,
                client=client,
                details=details,
            )
        measurement = measurement_of(verified)
        details["evidence_type"] = verified.evidence_type.value
        expected = envelope.report_data(nonce, client_pk, job_bytes)
        if not hmac.compare_digest(verified.claims.report_data, expected):
            await self._refuse(
                403,
                "binding_mismatch",
                "report_data does not bind the nonce, the client public key and the job "
                "measurement (SHA-512 binding of docs/broker-protocol.md)",
                event="attest",
                key_id=audit_key,
                client=client,
                measurement=measurement,
                details=details,
            )
        if job_bytes is not None:
            claims = dataclasses.replace(
                verified.claims,
                extra={**verified.claims.extra, "job_measurement": job_bytes.hex()},
            )
            verified = dataclasses.replace(verified, claims=claims)
            details["job_measurement"] = job_bytes.hex()

        unknown = [k for k in key_ids if k not in self._keys]
        if unknown:
            await self._refuse(
                404,
                "unknown_key",
                f"no key {', '.join(map(repr, unknown))} in this broker",
                event="attest",
                key_id=audit_key,
                client=client,
                measurement=measurement,
                details=details,
            )
        for key_id in key_ids:
            if self._keys[key_id].problems:
                await self._refuse_tampered(
                    self._keys[key_id],
                    client,
                    event="attest",
                    ctx={"key_id": audit_key, "measurement": measurement, "details": details},
                )
        reasons: list[str] = []
        revisions: dict[str, int] = {}
        for key_id in key_ids:
            key = self._keys[key_id]
            if key.state != "enabled":
                reasons.append(f"key {key_id!r} is disabled")
            elif key.policy is None:
                reasons.append(f"key {key_id!r} has no release policy")
            else:
                appraisal = key.policy.appraise(verified, at=at, expected_report_data=expected)
                reasons.extend(f"key {key_id!r}: {r}" for r in appraisal.reasons)
                revisions[key_id] = key.policy_revision
        if reasons:
            await self._refuse(
                403,
                "policy_refused",
                "the evidence does not satisfy the key policy",
                event="attest",
                reasons=reasons,
                key_id=audit_key,
                client=client,
                measurement=measurement,
                details=details,
            )

        token = secrets.token_urlsafe(32)
        digest = envelope.token_digest(token)
        session_key = os.urandom(envelope.SESSION_KEY_SIZE)
        sealed_session_key = envelope.seal(
            client_pk, session_key, envelope.session_info(nonce, digest)
        )
        token_expires = now + self.config.token_ttl
        if verified.collateral_expires is not None:
            token_expires = min(token_expires, verified.collateral_expires.timestamp())
        session = _Session(
            token_sha256=digest,
            client_public_key=client_pk,
            key_ids=frozenset(key_ids),
            expires=token_expires,
            verified=verified,
            measurement=measurement,
            evidence_type=verified.evidence_type.value,
            revisions=revisions,
            session_key=AESGCM(session_key),
        )
        details["session"] = session.session_id
        await self._commit(
            [
                self._audit(
                    "attest",
                    "ok",
                    key_id=audit_key,
                    client=client,
                    measurement=measurement,
                    details=details,
                )
            ]
        )
        while len(self._sessions) >= self.config.max_sessions:
            del self._sessions[next(iter(self._sessions))]
        self._sessions[digest] = session
        log.info(
            "attestation accepted",
            extra={"client": client, "key_ids": key_ids, "measurement": measurement},
        )
        return {
            "token": token,
            "token_type": "Bearer",
            "sealed_session_key": b64(sealed_session_key),
            "expires_at": utc_timestamp(token_expires),
            "expires_in": round(token_expires - now, 3),
            "key_ids": key_ids,
            "evidence_type": verified.evidence_type.value,
            "measurement": measurement,
        }

    # -- key release -------------------------------------------------------------------

    async def release(
        self, operation: str, client: str, key_id: str, authorization: str | None, body: bytes
    ) -> dict[str, Any]:
        """``operation`` is "datakey" or "unwrap"."""
        doc = parse_object(body)
        check_key_id(key_id)
        client_pk = _required_b64(doc, "client_public_key", size=envelope.PUBLIC_KEY_SIZE)
        request_id = _required_b64(doc, "request_id", size=envelope.REQUEST_ID_SIZE)
        wrapped = b""
        if operation == "unwrap":
            wrapped = _required_b64(doc, "wrapped", max_size=MAX_WRAPPED)
        now = self._clock()
        self._purge(now)
        event = operation
        token = _bearer(authorization)
        if token is None:
            await self._refuse(
                401,
                "missing_token",
                "no session token: attest first (Authorization: Bearer)",
                event=event,
                key_id=key_id,
                client=client,
            )
        digest = envelope.token_digest(token)
        session = self._sessions.get(digest)
        if session is None:
            await self._refuse(
                401,
                "invalid_token",
                "unknown session token (expired, or the broker restarted)",
                event=event,
                key_id=key_id,
                client=client,
            )
        ctx: dict[str, Any] = {
            "key_id": key_id,
            "client": client,
            "measurement": session.measurement,
            "details": {"session": session.session_id},
        }
        if now >= session.expires:
            self._sessions.pop(digest, None)
            await self._refuse(401, "token_expired", "session token expired", event=event, **ctx)
        if not hmac.compare_digest(session.client_public_key, client_pk):
            await self._refuse(
                401,
                "key_mismatch",
                "the session token is bound to another client key pair",
                event=event,
                **ctx,
            )
        key = self._keys.get(key_id)
        if key is None:
            await self._refuse(404, "unknown_key", f"no key {key_id!r}", event=event, **ctx)
        if key.problems:
            await self._refuse_tampered(key, client, event=event, ctx=ctx)
        if key.state != "enabled":
            await self._refuse(
                403, "key_disabled", f"key {key_id!r} is disabled", event=event, **ctx
            )
        if key_id not in session.key_ids:
            await self._refuse(
                403,
                "not_in_scope",
                f"the session was not attested for key {key_id!r}; attest with it in key_ids",
                event=event,
                **ctx,
            )
        if key.policy is None:
            await self._refuse(
                403,
                "policy_refused",
                f"key {key_id!r} has no release policy",
                event=event,
                **ctx,
            )
        if session.revisions.get(key_id) != key.policy_revision:
            # The policy changed since the session was appraised: appraise again.
            appraisal = key.policy.appraise(session.verified, at=self._now_dt(now))
            if not appraisal.accepted:
                await self._refuse(
                    403,
                    "policy_refused",
                    "the session's evidence does not satisfy the key's current policy",
                    reasons=appraisal.reasons,
                    event=event,
                    **ctx,
                )
            session.revisions[key_id] = key.policy_revision

        if operation == "datakey":
            version = key.current_version
            dek = os.urandom(DEK_SIZE)
            wrapped = envelope.wrap_versioned(key.keks[version], key_id, version, dek)
        else:
            try:
                version = envelope.wrapped_version(wrapped)
            except IntegrityError as exc:
                await self._refuse(400, "bad_wrapped_key", str(exc), event=event, **ctx)
            kek = key.keks.get(version)
            if kek is None:
                await self._refuse(
                    404,
                    "unknown_key_version",
                    f"key {key_id!r} has no version {version}",
                    event=event,
                    **ctx,
                )
            try:
                dek = envelope.unwrap_versioned(kek, key_id, wrapped)
            except IntegrityError:
                await self._refuse(
                    400,
                    "bad_wrapped_key",
                    f"the wrapped key does not unwrap under key {key_id!r} version {version} "
                    "(another key, or it was modified)",
                    event=event,
                    **ctx,
                )
        info = envelope.envelope_info(operation, key_id, version, request_id, digest)
        sealed = envelope.seal_data_key(session.session_key, dek, info, session.next_iv())
        ctx["details"]["version"] = version
        await self._commit([self._audit(event, "ok", **ctx)])
        out = {
            "key_id": key_id,
            "version": version,
            "request_id": b64(request_id),
            "sealed_key": b64(sealed),
        }
        if operation == "datakey":
            out["wrapped"] = b64(wrapped)
        return out

    # -- administration ----------------------------------------------------------------

    async def check_admin(self, authorization: str | None, client: str, action: str) -> None:
        token = _bearer(authorization)
        given = hashlib.sha256((token or "").encode("utf-8", "replace")).digest()
        if token is None or not hmac.compare_digest(given, self._admin_digest):
            await self._refuse(
                401,
                "admin_unauthorized",
                "admin call without the admin credential (Authorization: Bearer <admin token>)",
                event="admin.refused",
                client=client,
                details={"action": action},
            )

    def _key(self, key_id: str) -> _Key:
        check_key_id(key_id)
        key = self._keys.get(key_id)
        if key is None:
            raise Refusal(404, "unknown_key", f"no key {key_id!r}")
        return key

    def _parse_policy(self, value: object) -> Policy | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise Refusal(
                400, "bad_policy", f"policy: expected a JSON object, got {type(value).__name__}"
            )
        try:
            return Policy.from_dict(value)
        except (PolicyError, ConfigError, ValueError, TypeError) as exc:
            raise Refusal(400, "bad_policy", f"policy: {exc}", [str(exc)]) from None

    def _new_version(self, key: _Key, version: int, stamp: str) -> PutVersion:
        kek = os.urandom(keywrap.KEK_SIZE)
        key.keks[version] = kek
        wrapped = keywrap.wrap(
            self._master.kek_wrapping_key, kek_aad_name(key.key_id, version), kek
        )
        row = VersionRow(key.key_id, version, wrapped, stamp)
        mac = version_row_mac(self._master.row_key, row)
        key.version_macs[version] = mac
        return PutVersion(dataclasses.replace(row, mac=mac))

    def _put(self, key: _Key, audit: AppendAudit) -> PutKey:
        """The key's row, MAC'd and bound to the audit entry that records the change."""
        return PutKey(key.sealed_row(self._master.row_key, audit.entry.seq))

    async def _check_intact(self, key: _Key, client: str, action: str) -> None:
        """Refuse to change a key whose stored row does not verify (delete it instead)."""
        if key.problems:
            await self._refuse_tampered(key, client, details={"action": action}, status=409)

    @staticmethod
    def _policy_json(policy: Policy | None) -> str | None:
        if policy is None:
            return None
        return json.dumps(policy.to_dict(), sort_keys=True)

    async def create_key(self, client: str, body: bytes) -> dict[str, Any]:
        doc = parse_object(body)
        key_id = check_key_id(doc.get("key_id"))
        policy = self._parse_policy(doc.get("policy"))
        if key_id in self._keys:
            raise Refusal(409, "key_exists", f"key {key_id!r} already exists")
        stamp = utc_timestamp(self._clock())
        key = _Key(key_id, "enabled", 1, policy, self._policy_json(policy), 1, stamp, stamp)
        version = self._new_version(key, 1, stamp)
        self._keys[key_id] = key
        audit = self._audit(
            "key.create",
            "ok",
            key_id=key_id,
            client=client,
            details={"version": 1, "policy": key.policy_json is not None},
        )
        await self._commit([self._put(key, audit), version, audit])
        log.info("key created", extra={"key_id": key_id, "client": client})
        return key.info()

    def list_keys(self) -> dict[str, Any]:
        return {"keys": [self._keys[k].info() for k in sorted(self._keys)]}

    def get_key(self, key_id: str) -> dict[str, Any]:
        return self._key(key_id).info()

    async def rotate_key(self, client: str, key_id: str) -> dict[str, Any]:
        key = self._key(key_id)
        await self._check_intact(key, client, "key.rotate")
        stamp = utc_timestamp(self._clock())
        version = key.current_version + 1
        put_version = self._new_version(key, version, stamp)
        key.current_version = version
        key.updated_at = stamp
        audit = self._audit(
            "key.rotate", "ok", key_id=key_id, client=client, details={"version": version}
        )
        await self._commit([put_version, self._put(key, audit), audit])
        log.info("key rotated", extra={"key_id": key_id, "version": version})
        return key.info()

    async def set_state(self, client: str, key_id: str, enabled: bool) -> dict[str, Any]:
        key = self._key(key_id)
        event = "key.enable" if enabled else "key.disable"
        await self._check_intact(key, client, event)
        key.state = "enabled" if enabled else "disabled"
        key.updated_at = utc_timestamp(self._clock())
        audit = self._audit(event, "ok", key_id=key_id, client=client)
        await self._commit([self._put(key, audit), audit])
        log.info("key %s", key.state, extra={"key_id": key_id})
        return key.info()

    async def delete_key(self, client: str, key_id: str) -> dict[str, Any]:
        key = self._key(key_id)
        del self._keys[key_id]
        versions = sorted(key.keks)
        await self._commit(
            [
                DeleteKey(key_id),
                self._audit(
                    "key.delete",
                    "ok",
                    key_id=key_id,
                    client=client,
                    details={"versions": versions},
                ),
            ]
        )
        log.info("key deleted", extra={"key_id": key_id})
        return {"key_id": key_id, "deleted": True, "versions": versions}

    async def set_policy(self, client: str, key_id: str, body: bytes) -> dict[str, Any]:
        key = self._key(key_id)
        value = parse_object(body)
        if "policy" not in value:
            raise bad_request('request body: expected {"policy": <policy object or null>}')
        policy = self._parse_policy(value["policy"])
        await self._check_intact(key, client, "key.policy")
        key.policy = policy
        key.policy_json = self._policy_json(policy)
        key.policy_revision += 1
        key.updated_at = utc_timestamp(self._clock())
        audit = self._audit(
            "key.policy",
            "ok",
            key_id=key_id,
            client=client,
            details={
                "policy_revision": key.policy_revision,
                "policy_sha256": hashlib.sha256((key.policy_json or "null").encode()).hexdigest(),
            },
        )
        await self._commit([self._put(key, audit), audit])
        log.info("key policy set", extra={"key_id": key_id, "revision": key.policy_revision})
        return key.info()

    def get_policy(self, key_id: str) -> dict[str, Any]:
        key = self._key(key_id)
        return {
            "key_id": key_id,
            "policy": key.policy.to_dict() if key.policy else None,
            "policy_revision": key.policy_revision,
        }

    async def read_audit(self, after: int, limit: int) -> dict[str, Any]:
        entries, head = await anyio.to_thread.run_sync(
            functools.partial(self._store.audit_snapshot, after, limit)
        )
        return {
            "entries": [e.to_dict() for e in entries],
            "head": head.to_dict() if head else None,
        }

    def stats(self) -> dict[str, Any]:
        writer = self._writer
        return {
            "keys": len(self._keys),
            "sessions": len(self._sessions),
            "outstanding_challenges": len(self._nonces),
            "audit_seq": self._chain.seq if self._chain else 0,
            "write_batches": writer.batches if writer else 0,
            "write_jobs": writer.jobs if writer else 0,
        }


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or len(value) > 512 or not value.isascii():
        return None
    return value


__all__ = ["AuditEntry", "AuditHead", "BrokerService", "Refusal"]
