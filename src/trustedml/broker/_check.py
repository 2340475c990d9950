"""Checking a broker store's integrity (row MACs, key index, seal, head file) and
sealing each write; migrating a schema 1 database to row MACs."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trustedml.broker._audit import AuditChain, AuditEntry, AuditHead, verify_entries
from trustedml.broker._integrity import (
    GENESIS_HEX,
    Seal,
    index_digest,
    index_text,
    key_row_mac,
    make_seal,
    parse_index,
    version_row_mac,
)
from trustedml.broker._master import MasterKey
from trustedml.broker._store import (
    AppendAudit,
    DeleteKey,
    KeyRow,
    PutKey,
    SetAuditHead,
    SetKeyIndex,
    SetSeal,
    StoreOp,
    StoreState,
    VersionRow,
    _entry_from_row,
    _head_from_text,
)
from trustedml.errors import AuditLogError


class Sealer:
    """Adds to each batch of writes what keeps the store sealed: the key index when a
    key row changed, the audit head and the seal (the group-commit writer's ``sealer``).
    One thread at a time (the writer's)."""

    def __init__(self, master: MasterKey, index: Mapping[str, int], head: AuditHead | None):
        self._master = master
        self._chain_key = master.audit_key
        self._index = dict(index)
        self._index_sha = index_digest(index_text(self._index) if self._index else None)
        self._seq = head.seq if head else 0
        self._mac = head.mac if head else GENESIS_HEX

    def __repr__(self) -> str:
        return f"Sealer(keys={len(self._index)}, seq={self._seq})"

    def __call__(self, ops: Sequence[StoreOp]) -> list[StoreOp]:
        extra: list[StoreOp] = []
        changed = False
        last: AuditEntry | None = None
        for op in ops:
            if isinstance(op, PutKey):
                self._index[op.row.key_id] = op.row.row_seq
                changed = True
            elif isinstance(op, DeleteKey):
                changed = self._index.pop(op.key_id, None) is not None or changed
            elif isinstance(op, AppendAudit):
                last = op.entry
        if changed:
            text = index_text(self._index)
            self._index_sha = index_digest(text)
            extra.append(SetKeyIndex(text))
        if last is not None:
            self._seq, self._mac = last.seq, last.mac
            extra.append(SetAuditHead(AuditChain(self._chain_key, None).head_of(last)))
        if changed or last is not None:
            extra.append(
                SetSeal(make_seal(self._master.seal_key, self._seq, self._mac, self._index_sha))
            )
        return extra


@dataclass
class StoreCheck:
    """What :func:`check_state` found. ``problems`` are store-wide (the broker refuses
    to start); ``keys`` maps a key id to why its row does not verify (the broker
    refuses to release it); ``missing`` are keys whose rows were deleted."""

    problems: list[str] = field(default_factory=list)
    keys: dict[str, list[str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    seal: Seal | None = None
    entries: int | None = None  # set by a full check (the whole audit chain)
    head: AuditHead | None = None
    first_bad_seq: int | None = None  # the first audit row that fails, if one does

    @property
    def ok(self) -> bool:
        return not (self.problems or self.keys or self.missing)

    def messages(self) -> list[str]:
        """Every problem, one line each."""
        out = list(self.problems)
        for key_id in sorted(self.keys):
            out.extend(f"key {key_id!r}: {p}" for p in self.keys[key_id])
        out.extend(
            f"key {k!r}: its row was deleted (the sealed key index still names it)"
            for k in self.missing
        )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head": self.head.to_dict() if self.head else None,
            "seal": self.seal.body() if self.seal else None,
            "problems": self.messages(),
            "keys": {k: list(v) for k, v in sorted(self.keys.items())},
            "notes": list(self.notes),
        }


def _check_seals(state: StoreState, master: MasterKey, out: StoreCheck) -> None:
    seal: Seal | None = None
    if state.seal_text is not None:
        try:
            seal = Seal.from_text(state.seal_text, "the database's seal")
        except AuditLogError as exc:
            out.problems.append(str(exc))
        else:
            if not seal.verifies(master.seal_key):
                out.problems.append("the database's seal was modified (its MAC does not verify)")
                seal = None
    elif state.last_entry or state.audit_head or state.keys or state.key_index_text:
        out.problems.append(
            "the database has no seal but holds audit entries or keys (it was removed, or "
            "the database predates schema 2)"
        )
    out.seal = seal
    where = f"head file {state.head_file}"
    file_seal: Seal | None = None
    if state.head_text is not None:
        try:
            file_seal = Seal.from_text(state.head_text, where)
        except AuditLogError as exc:
            out.problems.append(str(exc))
        else:
            if not file_seal.verifies(master.seal_key):
                out.problems.append(f"{where} was modified (its MAC does not verify)")
                file_seal = None
    elif state.seal_text is not None:
        out.problems.append(
            f"{where} is missing (deleted, or the database was moved without it): the "
            "database cannot be shown to be current; restore the file, or adopt the "
            "database as it is with `trustedml broker migrate`"
        )
    if file_seal is not None and seal is None and state.seal_text is None:
        out.problems.append(
            f"the database's seal is gone but {where} names audit entry "
            f"seq={file_seal.audit_seq}: the audit log and its head were wiped"
        )
    if file_seal is not None and seal is not None:
        if file_seal.audit_seq > seal.audit_seq:
            out.problems.append(
                f"the database is older than its head file: {where} names audit entry "
                f"seq={file_seal.audit_seq}, the database's seal seq={seal.audit_seq} "
                "(an older copy of the database was restored)"
            )
        elif file_seal.audit_seq == seal.audit_seq:
            if not hmac.compare_digest(file_seal.to_text(), seal.to_text()):
                out.problems.append(
                    f"the database's seal and {where} disagree at seq={seal.audit_seq} "
                    "(the database was replaced)"
                )
        elif file_seal.audit_seq and state.head_anchor_mac != file_seal.audit_mac:
            out.problems.append(
                f"{where} names audit entry seq={file_seal.audit_seq}, which the database "
                "does not hold as it was (the database was replaced)"
            )
        else:
            out.notes.append(
                f"{where} is {seal.audit_seq - file_seal.audit_seq} entries behind the "
                "database (a stop between a commit and the head write); the broker "
                "rewrites it when it starts"
            )
    if seal is None:
        return
    last = state.last_entry
    if last is None:
        if seal.audit_seq:
            out.problems.append(
                f"the audit log is empty but its seal names {seal.audit_seq} entries: it was wiped"
            )
    elif last[0] < seal.audit_seq:
        out.problems.append(
            f"the audit log is truncated: rows seq={last[0] + 1}..{seal.audit_seq} are "
            f"missing (the seal names seq={seal.audit_seq}, the last row is seq={last[0]})"
        )
    elif last[0] > seal.audit_seq:
        out.problems.append(
            f"the audit log has rows after its seal (seq={seal.audit_seq}): row "
            f"seq={seal.audit_seq + 1} was added by hand"
        )
    elif not hmac.compare_digest(last[1], seal.audit_mac):
        out.problems.append(f"audit row seq={last[0]} does not match the seal (it was replaced)")
    if state.audit_head is not None and state.audit_head.seq != seal.audit_seq:
        out.problems.append(
            f"the audit head (seq={state.audit_head.seq}) and the seal "
            f"(seq={seal.audit_seq}) disagree"
        )
    if not hmac.compare_digest(index_digest(state.key_index_text), seal.key_index_sha256):
        out.problems.append("the key index was modified (it does not match the seal)")


def check_state(state: StoreState, master: MasterKey) -> StoreCheck:
    """Check the seal, the head file, the key index and every key row (not the audit
    chain's entries: :func:`check_store` adds those)."""
    out = StoreCheck()
    _check_seals(state, master, out)
    try:
        out.index = parse_index(state.key_index_text)
    except AuditLogError as exc:
        out.problems.append(str(exc))
    versions: dict[str, dict[int, str]] = {}
    for v in state.versions:
        mac = version_row_mac(master.row_key, v)
        versions.setdefault(v.key_id, {})[v.version] = mac
        if not hmac.compare_digest(mac, v.mac):
            out.keys.setdefault(v.key_id, []).append(
                f"version {v.version} row does not verify (edited, or copied from another key)"
            )
    present = set()
    for row in state.keys:
        present.add(row.key_id)
        bad = out.keys.setdefault(row.key_id, [])
        macs = versions.get(row.key_id, {})
        expected = set(range(1, row.current_version + 1))
        if set(macs) != expected:
            bad.append(
                f"has versions {sorted(macs)}, expected 1..{row.current_version} "
                "(version rows were deleted or added)"
            )
        if not hmac.compare_digest(key_row_mac(master.row_key, row, macs), row.mac):
            bad.append(
                "row does not verify under the broker master key (its policy, state or "
                "versions were edited, or it was copied from another key)"
            )
        sealed = out.index.get(row.key_id)
        if sealed is None:
            bad.append("row is not in the sealed key index (inserted by hand)")
        elif sealed != row.row_seq:
            bad.append(
                f"row is not the current one (row_seq={row.row_seq}, the sealed index "
                f"names {sealed}): an older copy of the row was restored"
            )
    for key_id in [k for k, v in out.keys.items() if not v]:
        del out.keys[key_id]
    out.missing = sorted(set(out.index) - present)
    return out


def check_store(
    entries: Iterable[AuditEntry],
    state: StoreState,
    master: MasterKey,
    *,
    expect_head: tuple[int, str] | None = None,
) -> StoreCheck:
    """:func:`check_state` plus the whole audit chain, and, with ``expect_head`` (a
    head exported earlier: seq, MAC), that the log still holds that entry."""
    entries = list(entries)
    out = check_state(state, master)
    try:
        result = verify_entries(entries, master.audit_key, state.audit_head)
        out.entries, out.head = result.entries, result.head
    except AuditLogError as exc:
        out.problems.insert(0, str(exc))
        out.entries = len(entries)
        out.first_bad_seq = exc.seq
    if expect_head is not None:
        seq, mac = expect_head
        found = next((e for e in entries if e.seq == seq), None)
        if found is None:
            out.problems.append(
                f"the audit log does not reach the expected head seq={seq} (its last "
                f"entry is seq={entries[-1].seq if entries else 0}): it was rolled back "
                "or wiped"
            )
        elif not hmac.compare_digest(found.mac, mac):
            out.problems.append(
                f"audit entry seq={seq} is not the expected head (another MAC): the log "
                "was replaced"
            )
        else:
            out.notes.append(f"the log contains the expected head seq={seq}")
    return out


def parse_expected_head(text: str) -> tuple[int, str]:
    """An exported head: ``SEQ:MAC`` or the JSON of ``audit export-head --json``."""
    text = text.strip()
    try:
        if text.startswith("{"):
            doc = json.loads(text)
            seq, mac = int(doc["seq"]), str(doc["mac"])
        else:
            left, _, mac = text.partition(":")
            seq = int(left)
        if seq < 1 or len(bytes.fromhex(mac)) != 32:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise AuditLogError(
            f"expected head: expected SEQ:MAC (64 hex digits) or export-head JSON, got "
            f"{text[:80]!r}"
        ) from None
    return seq, mac.lower()


# -- migration -------------------------------------------------------------------------


def migrate_v1(conn: sqlite3.Connection, master: MasterKey, now: float) -> dict[str, Any]:
    """Add row MACs, the key index and the seal to a schema 1 database, in the
    transaction the caller opened; returns what to report. The audit chain must
    verify first; the rows are adopted as they are (an administrator reviews them)."""
    rows = conn.execute("SELECT * FROM audit ORDER BY seq").fetchall()
    head_row = conn.execute("SELECT value FROM meta WHERE name = 'audit_head'").fetchone()
    head = _head_from_text(head_row[0] if head_row else None)
    verify_entries([_entry_from_row(r) for r in rows], master.audit_key, head)
    for statement in (
        "ALTER TABLE keys ADD COLUMN row_seq INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE keys ADD COLUMN mac TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE key_versions ADD COLUMN mac TEXT NOT NULL DEFAULT ''",
    ):
        conn.execute(statement)
    chain = AuditChain(master.audit_key, head)
    key_rows = conn.execute("SELECT * FROM keys ORDER BY key_id").fetchall()
    entry = chain.append(
        time=now,
        event="broker.migrate",
        outcome="ok",
        details={
            "schema": [1, 2],
            "keys": {
                r["key_id"]: {
                    "state": r["state"],
                    "policy_sha256": _sha(r["policy"]),
                    "policy_revision": int(r["policy_revision"]),
                }
                for r in key_rows
            },
        },
    )
    index: dict[str, int] = {}
    for r in key_rows:
        macs: dict[int, str] = {}
        for v in conn.execute(
            "SELECT * FROM key_versions WHERE key_id = ? ORDER BY version", (r["key_id"],)
        ):
            vrow = VersionRow(r["key_id"], int(v["version"]), bytes(v["wrapped_kek"]),
                              v["created_at"])  # fmt: skip
            macs[vrow.version] = version_row_mac(master.row_key, vrow)
            conn.execute(
                "UPDATE key_versions SET mac = ? WHERE key_id = ? AND version = ?",
                (macs[vrow.version], vrow.key_id, vrow.version),
            )
        krow = KeyRow(
            r["key_id"], r["state"], int(r["current_version"]), r["policy"],
            int(r["policy_revision"]), r["created_at"], r["updated_at"], entry.seq,
        )  # fmt: skip
        conn.execute(
            "UPDATE keys SET row_seq = ?, mac = ? WHERE key_id = ?",
            (entry.seq, key_row_mac(master.row_key, krow, macs), krow.key_id),
        )
        index[krow.key_id] = entry.seq
    conn.execute(
        "INSERT INTO audit (seq, time, event, outcome, key_id, client, measurement, "
        "reasons, details, prev_mac, mac) VALUES (?, ?, ?, ?, NULL, NULL, NULL, '[]', ?, ?, ?)",
        (entry.seq, entry.time, entry.event, entry.outcome,
         json.dumps(dict(entry.details), sort_keys=True), entry.prev_mac, entry.mac),
    )  # fmt: skip
    text = index_text(index)
    seal = make_seal(master.seal_key, entry.seq, entry.mac, index_digest(text))
    for name, value in (
        ("audit_head", json.dumps(chain.head().to_dict(), sort_keys=True)),
        ("key_index", text),
        ("seal", seal.to_text()),
        ("schema_version", "2"),
    ):
        conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))
    return {"migrated": True, "keys": sorted(index), "audit_seq": entry.seq, "seal": seal}


def _sha(text: str | None) -> str:
    return hashlib.sha256((text or "null").encode()).hexdigest()
