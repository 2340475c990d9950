"""Talking to a key broker: the attested key store client and its shared sessions."""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustedml._secret import Secret
from trustedml.attestation import EvidenceProvider
from trustedml.broker._errors import (
    BrokerKeyNotFoundError,
    BrokerRefusedError,
    BrokerUnavailableError,
    KeyBrokerError,
)
from trustedml.data import DataKey, check_key_id
from trustedml.errors import ConfigError, IntegrityError
from trustedml.hazmat import envelope

CaSource = str | os.PathLike[str] | bytes | ssl.SSLContext | None
Collateral = bytes | Callable[[bytes], bytes | None] | None

# Session tokens are renewed this many seconds before the broker says they expire.
_RENEW_MARGIN = 5.0
_RETRIES = 3
_SESSION_RETRY_CODES = frozenset({"invalid_token", "token_expired"})


def client_ssl_context(ca: CaSource) -> ssl.SSLContext:
    """Verify the broker against ``ca`` (a PEM file, PEM bytes, a ready context, or
    None for the system's trust store); TLS 1.3 only. Verification is never off."""
    if isinstance(ca, ssl.SSLContext):
        return ca
    if ca is None:
        ctx = ssl.create_default_context()
    elif isinstance(ca, bytes):
        try:
            ctx = ssl.create_default_context(cadata=ca.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"CA certificate: not PEM certificates ({exc})") from None
    else:
        path = Path(ca)
        try:
            ctx = ssl.create_default_context(cafile=str(path))
        except FileNotFoundError:
            raise ConfigError(f"CA certificate {path} does not exist") from None
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"CA certificate {path}: cannot be loaded ({exc})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _check_url(url: str, transport: object) -> str:
    if not isinstance(url, str) or not url:
        raise ConfigError(f"broker URL: expected https://HOST:PORT, got {url!r}")
    if not url.startswith("https://") and transport is None:
        raise ConfigError(f"broker URL: expected https://HOST:PORT (TLS only), got {url!r}")
    return url.rstrip("/")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise BrokerUnavailableError(f"broker response: {what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BrokerUnavailableError(f"broker response: {what} is not base64") from None


class _Http:
    """JSON over HTTPS with the broker's error mapping."""

    def __init__(
        self,
        url: str,
        ca: CaSource,
        transport: httpx.BaseTransport | None,
        timeout: float,
    ) -> None:
        self.url = _check_url(url, transport)
        if transport is not None:
            self._client = httpx.Client(base_url=self.url, transport=transport, timeout=timeout)
        else:
            self._client = httpx.Client(
                base_url=self.url, verify=client_ssl_context(ca), timeout=timeout
            )

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        token: str | None = None,
        params: Mapping[str, Any] | None = None,
        retry: bool = False,
    ) -> tuple[int, dict[str, Any]]:
        """``retry``: wait and retry on 429 and 503 (only for requests that are safe
        to repeat)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for attempt in range(_RETRIES + 1):
            try:
                response = self._client.request(
                    method, path, json=json, headers=headers, params=params
                )
            except httpx.HTTPError as exc:
                raise BrokerUnavailableError(
                    f"key broker {self.url} cannot be reached: {type(exc).__name__}: {exc}"
                ) from None
            if retry and response.status_code in (429, 503) and attempt < _RETRIES:
                try:
                    wait = float(response.headers.get("retry-after", "1"))
                except ValueError:
                    wait = 1.0
                time.sleep(min(max(wait, 0.05), 5.0))
                continue
            break
        try:
            doc = response.json()
        except (ValueError, RecursionError):  # not JSON, or hostile JSON from a bad peer
            doc = None
        if not isinstance(doc, dict):
            raise BrokerUnavailableError(
                f"key broker {self.url}{path}: HTTP {response.status_code} without a JSON body"
            )
        if response.status_code >= 400:
            raise _error(response.status_code, doc, f"{method} {path}")
        return response.status_code, doc


def _error(
    status: int, doc: Mapping[str, Any], what: str
) -> KeyBrokerError | BrokerKeyNotFoundError:
    code = str(doc.get("error", "error"))
    message = str(doc.get("message", ""))
    raw = doc.get("reasons")
    reasons = [str(r) for r in raw] if isinstance(raw, list) else []
    text = f"key broker refused {what} (HTTP {status}, {code}): {message}"
    if reasons and reasons != [message]:
        text += "; " + "; ".join(reasons)
    if status >= 500:
        return BrokerUnavailableError(text)
    cls = BrokerKeyNotFoundError if status == 404 else BrokerRefusedError
    return cls(text, status=status, code=code, reasons=reasons)


@dataclass
class _Session:
    token: str = field(repr=False)
    token_sha256: bytes = field(repr=False)
    public_key: bytes
    session_key: bytes = field(repr=False)
    key_ids: frozenset[str]
    expires_at: float  # time.time() when the broker stops honouring the token
    measurement: str | None = None
    lifetime: float = 0.0  # seconds the token was granted for
    aead: AESGCM = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.aead = AESGCM(self.session_key)

    @property
    def renew_at(self) -> float:
        """A little before expiry: 5 s, or a tenth of a short lifetime."""
        return self.expires_at - min(_RENEW_MARGIN, self.lifetime / 10)

    def usable_for(self, key_id: str) -> bool:
        return key_id in self.key_ids and time.time() < self.renew_at

    def narrowed(self, key_ids: frozenset[str]) -> _Session:
        """This session for ``key_ids`` only (all of its own when empty): what a copy
        handed to other processes may ask for. The broker's token keeps its scope."""
        if not key_ids or key_ids == self.key_ids:
            return self
        return replace(self, key_ids=key_ids)


@dataclass(frozen=True)
class AttestationResult:
    """What the broker said when it accepted our evidence."""

    key_ids: tuple[str, ...]
    expires_in: float
    evidence_type: str
    measurement: str | None


class _Releaser:
    """Asking for data keys within a session (shared by the client and worker copies)."""

    _http: _Http

    @property
    def url(self) -> str:
        return self._http.url

    def close(self) -> None:
        self._http.close()

    def _session_for(self, key_id: str, *, renew: bool = False) -> _Session:
        raise NotImplementedError

    def _release(
        self, operation: str, key_id: str, extra: Mapping[str, str]
    ) -> tuple[_Session, bytes, dict[str, Any]]:
        check_key_id(key_id)
        renew = False
        for attempt in range(2):
            session = self._session_for(key_id, renew=renew)
            request_id = os.urandom(envelope.REQUEST_ID_SIZE)
            body = {
                "client_public_key": _b64(session.public_key),
                "request_id": _b64(request_id),
                **extra,
            }
            try:
                _, doc = self._http.request(
                    "POST", f"/v1/keys/{key_id}/{operation}", json=body, token=session.token
                )
            except BrokerRefusedError as exc:
                # The broker forgot the session (restart) or it expired: attest again once.
                if attempt == 0 and exc.code in _SESSION_RETRY_CODES:
                    renew = True
                    continue
                raise
            return session, request_id, doc
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _open(
        operation: str,
        key_id: str,
        session: _Session,
        request_id: bytes,
        doc: Mapping[str, Any],
    ) -> Secret:
        version = doc.get("version")
        if doc.get("key_id") != key_id or not isinstance(version, int):
            raise BrokerUnavailableError("broker response names another key")
        if _unb64(doc.get("request_id"), "request_id") != request_id:
            raise BrokerUnavailableError("broker response answers another request")
        sealed = _unb64(doc.get("sealed_key"), "sealed_key")
        info = envelope.envelope_info(operation, key_id, version, request_id, session.token_sha256)
        plaintext = envelope.open_data_key(session.aead, sealed, info)
        if len(plaintext) != 32:
            raise IntegrityError(f"broker released a {len(plaintext)}-byte key, expected 32")
        return Secret(plaintext)

    def generate_data_key(self, key_id: str) -> DataKey:
        """A fresh data key from the broker, and its wrapped form to store."""
        session, request_id, doc = self._release("datakey", key_id, {})
        plaintext = self._open("datakey", key_id, session, request_id, doc)
        return DataKey(key_id, _unb64(doc.get("wrapped"), "wrapped"), plaintext)

    def unwrap_data_key(self, key_id: str, wrapped: bytes) -> Secret:
        """The plaintext of a data key the broker wrapped under ``key_id``."""
        session, request_id, doc = self._release("unwrap", key_id, {"wrapped": _b64(wrapped)})
        return self._open("unwrap", key_id, session, request_id, doc)


class KeyBrokerClient(_Releaser):
    """A :class:`~trustedml.data.KeyStore` backed by a key broker.

    On first use (and when the session expires, or a new key id is needed) it asks
    for a challenge, has ``provider`` produce evidence binding the nonce and a fresh
    ephemeral X25519 key, and trades it for a session token and a session key sealed
    to that ephemeral key (HPKE). Data keys then come back sealed under the session
    key. Thread-safe.

    ``collateral``: bytes, or a function of the evidence returning bytes, sent with
    the evidence (Intel collateral JSON, SEV-SNP VCEK). ``worker``: a label the broker
    records with each attestation (the cluster worker this process runs under; 1-128
    printable characters; not an identity, the evidence is). ``transport``: an httpx
    transport to use instead of the network (tests).
    """

    def __init__(
        self,
        url: str,
        *,
        provider: EvidenceProvider,
        ca: CaSource = None,
        key_ids: Iterable[str] = (),
        job_measurement: bytes | None = None,
        collateral: Collateral = None,
        worker: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        if worker is not None and not (
            isinstance(worker, str) and 1 <= len(worker) <= 128 and worker.isprintable()
        ):
            raise ConfigError(f"worker label: expected 1-128 printable characters, got {worker!r}")
        self._worker = worker
        self._http = _Http(url, ca, transport, timeout)
        self._ca = ca
        self._timeout = timeout
        self._provider = provider
        self._key_ids = frozenset(check_key_id(k) for k in key_ids)
        if job_measurement is not None and not 1 <= len(job_measurement) <= 64:
            raise ConfigError(f"job measurement: expected 1-64 bytes, got {len(job_measurement)}")
        self._job = job_measurement
        self._collateral = collateral
        self._lock = threading.Lock()
        self._session: _Session | None = None

    def __repr__(self) -> str:
        return f"KeyBrokerClient({self.url!r}, provider={self._provider!r})"

    @property
    def job_measurement(self) -> bytes | None:
        """The job measurement this client binds in its evidence (None: none)."""
        return self._job

    def ca_pem(self) -> bytes | None:
        """The CA this client verifies the broker with, as PEM bytes to hand to another
        process (None: the system's trust store)."""
        ca = self._ca
        if isinstance(ca, ssl.SSLContext):
            raise ConfigError("for_workers: give the CA as a file or PEM bytes, not an SSLContext")
        if ca is not None and not isinstance(ca, bytes):
            ca = Path(ca).read_bytes()
        return ca

    def __reduce__(self) -> Any:
        raise TypeError(
            "a KeyBrokerClient cannot be pickled; ship for_workers() to other processes"
        )

    def __enter__(self) -> KeyBrokerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- attestation -------------------------------------------------------------------

    def attest(self, key_ids: Iterable[str] = ()) -> AttestationResult:
        """Run challenge and attestation now for ``key_ids`` (plus those given at
        construction and those of the current session)."""
        with self._lock:
            wanted = set(self._key_ids) | {check_key_id(k) for k in key_ids}
            if self._session is not None:
                wanted |= self._session.key_ids
            return self._attest(wanted)

    def _attest(self, key_ids: set[str]) -> AttestationResult:
        if not key_ids:
            raise ConfigError("attest: no key ids to attest for")
        _, challenge = self._http.request("POST", "/v1/challenge", json={}, retry=True)
        nonce = _unb64(challenge.get("nonce"), "nonce")
        private_key = envelope.generate_private_key()
        public = envelope.public_key_bytes(private_key)
        try:
            report_data = envelope.report_data(nonce, public, self._job)
        except IntegrityError as exc:
            raise BrokerUnavailableError(f"broker challenge: {exc}") from None
        evidence = self._provider.get_evidence(report_data)
        collateral = self._collateral(evidence) if callable(self._collateral) else self._collateral
        body: dict[str, Any] = {
            "nonce": _b64(nonce),
            "evidence": _b64(evidence),
            "client_public_key": _b64(public),
            "key_ids": sorted(key_ids),
        }
        if collateral is not None:
            body["collateral"] = _b64(collateral)
        if self._job is not None:
            body["job_measurement"] = self._job.hex()
        if self._worker is not None:
            body["worker"] = self._worker
        started = time.time()
        _, doc = self._http.request("POST", "/v1/attest", json=body)
        token = doc.get("token")
        if not isinstance(token, str) or not token.isascii() or not token:
            raise BrokerUnavailableError("broker response: token is missing")
        digest = envelope.token_digest(token)
        session_key = envelope.open_sealed(
            private_key,
            _unb64(doc.get("sealed_session_key"), "sealed_session_key"),
            envelope.session_info(nonce, digest),
        )
        if len(session_key) != envelope.SESSION_KEY_SIZE:
            raise IntegrityError("broker sent a session key of the wrong size")
        try:
            expires_in = float(doc.get("expires_in", 0))
        except (TypeError, ValueError):
            expires_in = 0.0
        measurement = doc.get("measurement")
        self._session = _Session(
            token=token,
            token_sha256=digest,
            public_key=public,
            session_key=session_key,
            key_ids=frozenset(key_ids),
            expires_at=started + expires_in,
            measurement=measurement if isinstance(measurement, str) else None,
            lifetime=expires_in,
        )
        return AttestationResult(
            tuple(sorted(key_ids)),
            expires_in,
            str(doc.get("evidence_type", "")),
            self._session.measurement,
        )

    def _session_for(self, key_id: str, *, renew: bool = False) -> _Session:
        with self._lock:
            session = self._session
            if renew or session is None or not session.usable_for(key_id):
                wanted = set(self._key_ids) | {key_id}
                if session is not None and not renew:
                    wanted |= session.key_ids
                self._attest(wanted)
                session = self._session
            assert session is not None
            return session

    def for_workers(self, key_ids: Collection[str] = ()) -> BrokerSession:
        """This client's session (attesting now if there is none, or it lacks
        ``key_ids``) as a picklable key store for the other processes of the same job,
        e.g. Spark's Python workers, serving only ``key_ids`` (the session's whole
        scope when empty). It releases keys until the session expires and cannot
        attest again. It carries the session key: ship it only inside the trusted
        runtime, over encrypted channels, as a :class:`KeyRing` is."""
        wanted = frozenset(check_key_id(k) for k in key_ids)
        with self._lock:
            session = self._session
            if session is None or not all(session.usable_for(k) for k in wanted):
                self._attest(set(self._key_ids) | wanted | (session.key_ids if session else set()))
                session = self._session
            assert session is not None
        return BrokerSession(
            self.url, session.narrowed(wanted), ca=self.ca_pem(), timeout=self._timeout
        )


def _not_in_scope(key_id: str) -> BrokerRefusedError:
    return BrokerRefusedError(
        f"the job's broker session was not attested for key {key_id!r}",
        status=403,
        code="not_in_scope",
    )


class BrokerSession(_Releaser):
    """A broker session shared with another process of the job (picklable): releases
    data keys with the session the attesting process established, until it expires.

    Made by :meth:`KeyBrokerClient.for_workers`.
    """

    def __init__(
        self, url: str, session: _Session, *, ca: bytes | None, timeout: float = 30.0
    ) -> None:
        self._url, self._ca, self._timeout = url, ca, timeout
        self._session = session
        self._http = _Http(url, ca, None, timeout)

    def __repr__(self) -> str:
        return f"BrokerSession({self.url!r}, key_ids={sorted(self._session.key_ids)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BrokerSession):
            return NotImplemented
        return (
            self._url == other._url
            and self._session.key_ids == other._session.key_ids
            and hmac.compare_digest(self._session.token_sha256, other._session.token_sha256)
        )

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        s = self._session
        return {
            "url": self._url,
            "ca": self._ca,
            "timeout": self._timeout,
            "token": s.token,
            "public_key": s.public_key,
            "session_key": s.session_key,
            "key_ids": sorted(s.key_ids),
            "expires_at": s.expires_at,
            "measurement": s.measurement,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        session = _Session(
            token=state["token"],
            token_sha256=envelope.token_digest(state["token"]),
            public_key=state["public_key"],
            session_key=state["session_key"],
            key_ids=frozenset(state["key_ids"]),
            expires_at=state["expires_at"],
            measurement=state["measurement"],
        )
        self.__init__(state["url"], session, ca=state["ca"], timeout=state["timeout"])  # type: ignore[misc]

    @property
    def expires_at(self) -> float:
        return self._session.expires_at

    def for_workers(self, key_ids: Collection[str] = ()) -> BrokerSession:
        """This session serving only ``key_ids`` (itself when empty or the same). The
        broker's token keeps the scope it was attested for; the narrowing is this
        copy's: it refuses other key ids before asking. A session cannot attest, so a
        key id outside its scope is refused here (``not_in_scope``)."""
        wanted = frozenset(check_key_id(k) for k in key_ids)
        outside = sorted(wanted - self._session.key_ids)
        if outside:
            raise _not_in_scope(outside[0])
        session = self._session.narrowed(wanted)
        if session is self._session:
            return self
        return BrokerSession(self._url, session, ca=self._ca, timeout=self._timeout)

    def _session_for(self, key_id: str, *, renew: bool = False) -> _Session:
        session = self._session
        if key_id not in session.key_ids:
            raise _not_in_scope(key_id)
        if renew or time.time() >= session.expires_at:
            raise BrokerRefusedError(
                "the job's broker session expired; only the attesting process can renew it",
                status=401,
                code="token_expired",
            )
        return session
