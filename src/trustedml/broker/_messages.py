"""The broker protocol's messages (docs/broker-protocol.md): request fields, checked in
the order the protocol lists them, each mistake a 400 that says expected vs got; and the
shapes of the answers."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trustedml.broker._audit import utc_timestamp
from trustedml.broker._errors import Refusal
from trustedml.broker._sessions import NewSession
from trustedml.broker._wire import WireFormatError, loads_object
from trustedml.data import KEY_ID_PATTERN
from trustedml.hazmat import envelope

MAX_KEY_IDS = 64
MAX_WRAPPED = 1024
MAX_WORKER_LABEL = 128
_HEX = re.compile(r"[0-9a-fA-F]*")  # fullmatch: `$` would let a trailing newline in


def bad_request(message: str) -> Refusal:
    """A 400 ``bad_request`` whose one reason is its message."""
    return Refusal(400, "bad_request", message, [message])


def parse_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, within the wire limits (broker/_wire.py)."""
    try:
        return loads_object(body)
    except WireFormatError as exc:
        raise bad_request(str(exc)) from None


def b64_field(
    doc: Mapping[str, Any],
    name: str,
    *,
    size: int | None = None,
    max_size: int | None = None,
    required: bool = True,
) -> bytes | None:
    """Member ``name`` of ``doc`` decoded from base64: exactly ``size`` or at most
    ``max_size`` bytes, never empty; None when it is absent and not ``required``."""
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


def required_b64(
    doc: Mapping[str, Any], name: str, *, size: int | None = None, max_size: int | None = None
) -> bytes:
    """:func:`b64_field` for a member the request must have."""
    raw = b64_field(doc, name, size=size, max_size=max_size)
    assert raw is not None
    return raw


def check_key_id(key_id: object, what: str = "key id") -> str:
    """``key_id`` if it is a well-formed key id, else a 400 naming ``what``."""
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
        shown = key_id if isinstance(key_id, str) else type(key_id).__name__
        raise bad_request(
            f"{what}: expected 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter "
            f"or digit, got {shown!r}"[:300]
        )
    return key_id


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header (None: absent or malformed)."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or len(value) > 512 or not value.isascii():
        return None
    return value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class AttestRequest:
    """``POST /v1/attest``: evidence for a nonce, bound to a client key (and a job)."""

    nonce: bytes
    evidence: bytes
    collateral: bytes | None
    client_public_key: bytes
    job_measurement: bytes | None
    key_ids: list[str]  # sorted, no repeats
    # The cluster worker the client says it runs under: a label for the audit log, not
    # an identity (the evidence is); absent from older clients.
    worker: str | None = None

    @property
    def audit_key(self) -> str | None:
        """The key id its audit entries name: the one key, or None for several."""
        return self.key_ids[0] if len(self.key_ids) == 1 else None


def parse_attest(body: bytes, max_size: int) -> AttestRequest:
    """An attest request; ``max_size`` bounds the evidence and the collateral."""
    doc = parse_object(body)
    nonce = required_b64(doc, "nonce", size=envelope.NONCE_SIZE)
    evidence = required_b64(doc, "evidence", max_size=max_size)
    collateral = b64_field(doc, "collateral", required=False, max_size=max_size)
    client_pk = required_b64(doc, "client_public_key", size=envelope.PUBLIC_KEY_SIZE)
    job = doc.get("job_measurement")
    job_bytes: bytes | None = None
    if job is not None:
        if (
            not isinstance(job, str)
            or not _HEX.fullmatch(job)
            or len(job) % 2
            or not 2 <= len(job) <= 2 * envelope.MAX_JOB_MEASUREMENT_SIZE
        ):
            raise bad_request(f"job_measurement: expected 1-64 bytes as hex, got {str(job)[:80]!r}")
        job_bytes = bytes.fromhex(job)
    raw_ids = doc.get("key_ids")
    if not isinstance(raw_ids, list) or not 1 <= len(raw_ids) <= MAX_KEY_IDS:
        raise bad_request(f"key_ids: expected a list of 1-{MAX_KEY_IDS} key ids")
    key_ids = sorted({check_key_id(k, "key_ids[]") for k in raw_ids})
    worker = worker_label(doc.get("worker"))
    return AttestRequest(nonce, evidence, collateral, client_pk, job_bytes, key_ids, worker)


def worker_label(value: object) -> str | None:
    """The optional ``worker`` label: 1-128 printable characters (it is written to the
    audit log and shown in terminals), None when absent."""
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_WORKER_LABEL
        or not value.isprintable()
    ):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise bad_request(
            f"worker: expected 1-{MAX_WORKER_LABEL} printable characters, got {shown!r}"
        )
    return value


@dataclass(frozen=True)
class ReleaseRequest:
    """``POST /v1/keys/{key_id}/datakey`` or ``.../unwrap``."""

    operation: str  # "datakey" or "unwrap"
    key_id: str
    client_public_key: bytes
    request_id: bytes
    wrapped: bytes  # unwrap: the wrapped data key; datakey: empty


def parse_release(operation: str, key_id: str, body: bytes) -> ReleaseRequest:
    """A datakey or unwrap request for the key named in the path."""
    doc = parse_object(body)
    check_key_id(key_id)
    client_pk = required_b64(doc, "client_public_key", size=envelope.PUBLIC_KEY_SIZE)
    request_id = required_b64(doc, "request_id", size=envelope.REQUEST_ID_SIZE)
    wrapped = b""
    if operation == "unwrap":
        wrapped = required_b64(doc, "wrapped", max_size=MAX_WRAPPED)
    return ReleaseRequest(operation, key_id, client_pk, request_id, wrapped)


def challenge_answer(nonce: bytes, expires: float, ttl: float) -> dict[str, Any]:
    return {"nonce": b64(nonce), "expires_at": utc_timestamp(expires), "expires_in": ttl}


def attest_answer(opened: NewSession, key_ids: list[str], now: float) -> dict[str, Any]:
    session = opened.session
    return {
        "token": opened.token,
        "token_type": "Bearer",
        "sealed_session_key": b64(opened.sealed_session_key),
        "expires_at": utc_timestamp(session.expires),
        "expires_in": round(session.expires - now, 3),
        "key_ids": key_ids,
        "evidence_type": session.evidence_type,
        "measurement": session.measurement,
    }


def release_answer(
    request: ReleaseRequest, version: int, sealed: bytes, wrapped: bytes
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key_id": request.key_id,
        "version": version,
        "request_id": b64(request.request_id),
        "sealed_key": b64(sealed),
    }
    if request.operation == "datakey":
        out["wrapped"] = b64(wrapped)
    return out
