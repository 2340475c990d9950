"""The broker's short-lived state: challenge nonces, per-client rate buckets and attested
sessions, and when each is dropped. Lives on the event loop; nothing here is stored."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustedml.attestation import VerifiedEvidence
from trustedml.broker._config import BrokerConfig
from trustedml.broker._errors import Refusal
from trustedml.hazmat import envelope

log = logging.getLogger("trustedml.broker")

_PURGE_EVERY = 1.0
_MAX_BUCKETS = 10_000  # beyond this many client addresses, forget the full buckets


@dataclass
class Session:
    """What an accepted attestation grants: data keys of ``key_ids`` for the holder of
    the token and of the client key, until ``expires``."""

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


@dataclass(frozen=True)
class NewSession:
    """A session and what the client is sent to use it: the token and the session key
    sealed to its public key."""

    token: str
    sealed_session_key: bytes
    session: Session


def new_session(
    nonce: bytes,
    client_public_key: bytes,
    key_ids: list[str],
    verified: VerifiedEvidence,
    measurement: str | None,
    revisions: dict[str, int],
    expires: float,
) -> NewSession:
    """A fresh token and session key for an accepted attestation. The session ends at
    ``expires`` or when the evidence's collateral does, whichever comes first."""
    token = secrets.token_urlsafe(32)
    digest = envelope.token_digest(token)
    session_key = os.urandom(envelope.SESSION_KEY_SIZE)
    sealed = envelope.seal(client_public_key, session_key, envelope.session_info(nonce, digest))
    if verified.collateral_expires is not None:
        expires = min(expires, verified.collateral_expires.timestamp())
    session = Session(
        token_sha256=digest,
        client_public_key=client_public_key,
        key_ids=frozenset(key_ids),
        expires=expires,
        verified=verified,
        measurement=measurement,
        evidence_type=verified.evidence_type.value,
        revisions=revisions,
        session_key=AESGCM(session_key),
    )
    return NewSession(token, sealed, session)


@dataclass
class _Bucket:
    tokens: float
    last: float
    limited: bool = False


class Sessions:
    """Nonces issued and spent, sessions by token digest, and a token bucket per client
    address. Lifetimes are fixed, so insertion order is expiry order."""

    def __init__(self, config: BrokerConfig) -> None:
        self._config = config
        self._nonces: dict[bytes, float] = {}  # nonce -> expiry
        self._spent: dict[bytes, float] = {}  # used nonce -> its expiry
        self._sessions: dict[bytes, Session] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._next_purge = 0.0

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def outstanding_challenges(self) -> int:
        return len(self._nonces)

    def purge(self, now: float) -> None:
        """Drop what has expired (at most once every second)."""
        if now < self._next_purge:
            return
        self._next_purge = now + _PURGE_EVERY
        # Nonces stay one more lifetime after expiry, so a late client hears "expired"
        # (and a replay "already used") rather than "unknown".
        # Drop from the front (a session cut short by its collateral is refused when
        # used, then dropped).
        horizon = now - self._config.challenge_ttl
        for table in (self._nonces, self._spent):
            while table:
                nonce, expires = next(iter(table.items()))
                if expires > horizon:
                    break
                del table[nonce]
        while self._sessions:
            digest, session = next(iter(self._sessions.items()))
            if session.expires > now - self._config.token_ttl:
                break
            del self._sessions[digest]
        if len(self._buckets) > _MAX_BUCKETS:
            burst = self._config.challenge_burst
            rate = self._config.challenge_rate
            for client in [
                c for c, b in self._buckets.items() if b.tokens + (now - b.last) * rate >= burst
            ]:
                del self._buckets[client]

    def _take_challenge_token(self, client: str, now: float) -> float | None:
        """Token bucket per client address: None when allowed, else seconds to wait."""
        rate, burst = self._config.challenge_rate, float(self._config.challenge_burst)
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

    def issue_nonce(self, client: str, now: float) -> tuple[bytes, float]:
        """A fresh nonce for ``client`` and its expiry; 429 beyond the client's rate,
        503 beyond the outstanding challenges (neither is audited)."""
        wait = self._take_challenge_token(client, now)
        if wait is not None:
            raise Refusal(
                429,
                "rate_limited",
                f"too many challenges from {client}; retry in {wait:.2f} s",
                headers={"Retry-After": str(max(1, int(wait + 0.999)))},
            )
        if len(self._nonces) >= self._config.max_outstanding_challenges:
            raise Refusal(
                503, "busy", "too many outstanding challenges", headers={"Retry-After": "1"}
            )
        nonce = secrets.token_bytes(envelope.NONCE_SIZE)
        expires = now + self._config.challenge_ttl
        self._nonces[nonce] = expires
        return nonce, expires

    def redeem_nonce(self, nonce: bytes, now: float) -> None:
        """Spend ``nonce``: refused if this broker did not issue it, it was spent
        already (a replay) or it expired."""
        expires = self._nonces.pop(nonce, None)
        if expires is None:
            message = (
                "nonce was already used (replay)"
                if nonce in self._spent
                else "unknown nonce: not issued by this broker, or already expired"
            )
            raise Refusal(401, "bad_nonce", message)
        self._spent[nonce] = expires
        if now >= expires:
            raise Refusal(401, "nonce_expired", "nonce expired; ask for a new challenge")

    def add(self, session: Session) -> None:
        """Keep ``session``, forgetting the oldest beyond ``max_sessions``."""
        while len(self._sessions) >= self._config.max_sessions:
            del self._sessions[next(iter(self._sessions))]
        self._sessions[session.token_sha256] = session

    def find(self, token: str | None) -> Session:
        """The session of a bearer token, expired or not; refused without a token or
        for one this broker does not know."""
        if token is None:
            raise Refusal(
                401, "missing_token", "no session token: attest first (Authorization: Bearer)"
            )
        session = self._sessions.get(envelope.token_digest(token))
        if session is None:
            raise Refusal(
                401,
                "invalid_token",
                "unknown session token (expired, or the broker restarted)",
            )
        return session

    def check_live(self, session: Session, now: float) -> None:
        """Refuse, and forget, a session past its end."""
        if now >= session.expires:
            self._sessions.pop(session.token_sha256, None)
            raise Refusal(401, "token_expired", "session token expired")
