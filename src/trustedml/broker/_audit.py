"""The audit log: every broker decision, appended as a MAC chain.

Each entry's MAC covers the previous entry's MAC and the canonical JSON of the entry::

    mac_n = HMAC-SHA256(audit_key, "trustedml/broker/audit/v1" 0x00 || mac_{n-1} || canonical_n)
    mac_0 = 32 zero bytes

and the database keeps a MAC'd head (sequence number and MAC of the last entry), so
editing, deleting, reordering or truncating entries is detected, even by someone who
can write the database but does not hold the master key. The seal (broker/_integrity.py),
also kept in a head file beside the database, catches a wiped log or an older copy of
the database. docs/broker-protocol.md specifies the encoding.
"""

from __future__ import annotations

import hmac
import json
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

from trustedml.errors import AuditLogError

ENTRY_DOMAIN = b"trustedml/broker/audit/v1\x00"
HEAD_DOMAIN = b"trustedml/broker/audit-head/v1\x00"
GENESIS = bytes(32)

# What happened (the "event" column).
EVENTS = (
    "challenge",
    "attest",
    "datakey",
    "unwrap",
    "key.create",
    "key.rotate",
    "key.disable",
    "key.enable",
    "key.delete",
    "key.policy",
    "admin.refused",
    "broker.start",
    "broker.migrate",
    "key.integrity",
)
OUTCOMES = ("ok", "refused")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, ASCII only: one byte string per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


def utc_timestamp(epoch: float) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-28T10:58:23.123456Z``."""
    seconds = int(epoch // 1)
    micros = min(999_999, int((epoch - seconds) * 1_000_000))
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d}Z"
    )


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit log."""

    seq: int
    time: str
    event: str
    outcome: str
    key_id: str | None = None
    client: str | None = None
    measurement: str | None = None
    reasons: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)
    prev_mac: str = ""
    mac: str = ""

    def body(self) -> dict[str, Any]:
        """The fields the MAC covers."""
        return {
            "seq": self.seq,
            "time": self.time,
            "event": self.event,
            "outcome": self.outcome,
            "key_id": self.key_id,
            "client": self.client,
            "measurement": self.measurement,
            "reasons": list(self.reasons),
            "details": dict(self.details),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "prev_mac": self.prev_mac, "mac": self.mac}


@dataclass(frozen=True)
class AuditHead:
    """The last entry's sequence number and MAC, and a MAC over both."""

    seq: int
    mac: str
    head_mac: str

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "mac": self.mac, "head_mac": self.head_mac}


def entry_mac(audit_key: bytes, prev_mac: bytes, entry: AuditEntry) -> bytes:
    return hmac.digest(audit_key, ENTRY_DOMAIN + prev_mac + canonical_json(entry.body()), sha256)


def head_mac(audit_key: bytes, seq: int, mac: bytes) -> bytes:
    return hmac.digest(audit_key, HEAD_DOMAIN + struct.pack(">Q", seq) + mac, sha256)


class AuditChain:
    """Appends entries: assigns sequence numbers and MACs (one writer at a time)."""

    def __init__(self, audit_key: bytes, head: AuditHead | None) -> None:
        self._key = audit_key
        self.seq = head.seq if head else 0
        self._mac = bytes.fromhex(head.mac) if head else GENESIS

    def append(
        self,
        *,
        time: float,
        event: str,
        outcome: str,
        key_id: str | None = None,
        client: str | None = None,
        measurement: str | None = None,
        reasons: Sequence[str] = (),
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        if event not in EVENTS or outcome not in OUTCOMES:
            raise ValueError(f"audit: unknown event {event!r} or outcome {outcome!r}")
        seq, stamp = self.seq + 1, utc_timestamp(time)
        reasons, details = tuple(reasons), dict(details or {})
        body = {
            "seq": seq,
            "time": stamp,
            "event": event,
            "outcome": outcome,
            "key_id": key_id,
            "client": client,
            "measurement": measurement,
            "reasons": list(reasons),
            "details": details,
        }
        mac = hmac.digest(self._key, ENTRY_DOMAIN + self._mac + canonical_json(body), sha256)
        entry = AuditEntry(
            seq, stamp, event, outcome, key_id, client, measurement, reasons, details,
            prev_mac=self._mac.hex(), mac=mac.hex(),
        )  # fmt: skip
        self.seq, self._mac = seq, mac
        return entry

    def head(self) -> AuditHead:
        return AuditHead(self.seq, self._mac.hex(), head_mac(self._key, self.seq, self._mac).hex())

    def head_of(self, entry: AuditEntry) -> AuditHead:
        """The head naming ``entry`` (any thread: depends on the key only)."""
        mac = bytes.fromhex(entry.mac)
        return AuditHead(entry.seq, entry.mac, head_mac(self._key, entry.seq, mac).hex())


@dataclass(frozen=True)
class AuditVerification:
    """The result of :func:`verify_entries`: how many entries, and the head."""

    entries: int
    head: AuditHead | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "entries": self.entries,
            "head": self.head.to_dict() if self.head else None,
        }


def _hex(value: str, what: str, seq: int) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise AuditLogError(f"audit log row seq={seq}: {what} is not 64 hex digits", seq=seq)
    return raw


def verify_entries(
    entries: Iterable[AuditEntry], audit_key: bytes, head: AuditHead | None
) -> AuditVerification:
    """Check the whole chain; raise :class:`AuditLogError` naming the first bad row."""
    prev = GENESIS
    expected = 1
    count = 0
    for entry in entries:
        if entry.seq != expected:
            if entry.seq > expected:
                raise AuditLogError(
                    f"audit log row seq={expected} is missing (deleted): the next row is "
                    f"seq={entry.seq}",
                    seq=expected,
                )
            raise AuditLogError(
                f"audit log row seq={entry.seq} is out of order (expected seq={expected})",
                seq=entry.seq,
            )
        if not hmac.compare_digest(_hex(entry.prev_mac, "prev_mac", entry.seq), prev):
            raise AuditLogError(
                f"audit log row seq={entry.seq} does not follow row seq={entry.seq - 1} "
                "(a row was deleted, reordered or edited)",
                seq=entry.seq,
            )
        mac = _hex(entry.mac, "mac", entry.seq)
        if not hmac.compare_digest(entry_mac(audit_key, prev, entry), mac):
            raise AuditLogError(
                f"audit log row seq={entry.seq} was modified (its MAC does not verify)",
                seq=entry.seq,
            )
        prev = mac
        expected += 1
        count += 1
    last = expected - 1
    if head is None:
        if count:
            raise AuditLogError("audit log head is missing from the database")
        return AuditVerification(0, None)
    head_raw = _hex(head.mac, "head mac", head.seq)
    if not hmac.compare_digest(
        head_mac(audit_key, head.seq, head_raw), _hex(head.head_mac, "head MAC", head.seq)
    ):
        raise AuditLogError("audit log head was modified (its MAC does not verify)")
    if head.seq != last:
        if head.seq > last:
            raise AuditLogError(
                f"audit log is truncated: rows seq={last + 1}..{head.seq} are missing "
                f"(the head names seq={head.seq}, the last row is seq={last})",
                seq=last + 1,
            )
        raise AuditLogError(
            f"audit log has rows after its head (seq={head.seq}): row seq={head.seq + 1} "
            "was added by hand",
            seq=head.seq + 1,
        )
    if not hmac.compare_digest(head_raw, prev):
        raise AuditLogError(
            f"audit log row seq={last} does not match the head (it was replaced)", seq=last
        )
    return AuditVerification(count, head)
