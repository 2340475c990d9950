"""The audit log's MAC chain: any edited, deleted, reordered or truncated row is found
and named."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from trustedml import Secret
from trustedml.broker import AuditLogError, SQLiteStore, verify_audit_log
from trustedml.broker._audit import AuditChain, canonical_json, entry_mac
from trustedml.broker._check import Sealer
from trustedml.broker._master import MasterKey
from trustedml.broker._store import AppendAudit
from trustedml.errors import ConfigError, IntegrityError

MASTER_SECRET = MasterKey.generate()
MASTER = MasterKey(MASTER_SECRET)
ROWS = 8


def _log(tmp_path: Path, rows: int = ROWS) -> Path:
    path = tmp_path / "broker.db"
    store = SQLiteStore(path)
    store.initialize(MASTER.check_value)
    chain = AuditChain(MASTER.audit_key, None)
    sealer = Sealer(MASTER, {}, None)  # the broker's writer adds the head and the seal
    for i in range(rows):
        entry = chain.append(
            time=1_800_000_000.0 + i,
            event="unwrap",
            outcome="ok" if i % 3 else "refused",
            key_id=f"k{i % 2}",
            client="127.0.0.1",
            measurement="11" * 32,
            reasons=() if i % 3 else ("nope",),
            details={"version": 1, "i": i},
        )
        ops = [AppendAudit(entry)]
        store.write([*ops, *sealer(ops)])
    store.close()
    return path


def _sql(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


def test_intact_log_verifies(tmp_path: Path) -> None:
    result = verify_audit_log(_log(tmp_path), MASTER_SECRET)
    assert result.entries == ROWS
    assert result.head is not None
    assert result.head.seq == ROWS
    assert result.to_dict()["ok"] is True


def test_empty_log_verifies(tmp_path: Path) -> None:
    assert verify_audit_log(_log(tmp_path, rows=0), MASTER_SECRET).entries == 0


def test_mac_definition(tmp_path: Path) -> None:
    chain = AuditChain(b"k" * 32, None)
    entry = chain.append(time=0.0, event="challenge", outcome="ok")
    import hashlib
    import hmac

    body = canonical_json(entry.body())
    assert body.startswith(b'{"client":null,"details":{},"event":"challenge"')
    expected = hmac.new(
        b"k" * 32, b"trustedml/broker/audit/v1\x00" + bytes(32) + body, hashlib.sha256
    ).hexdigest()
    assert entry.mac == expected == entry_mac(b"k" * 32, bytes(32), entry).hex()
    assert entry.time == "1970-01-01T00:00:00.000000Z"


TAMPERING: dict[str, tuple[Callable[[], list[str]], int, str]] = {
    "edited outcome": (
        lambda: ["UPDATE audit SET outcome = 'ok' WHERE seq = 4"],
        4,
        "was modified",
    ),
    "edited reasons": (
        lambda: ["UPDATE audit SET reasons = '[]' WHERE seq = 1"],
        1,
        "was modified",
    ),
    "edited details": (
        lambda: ["""UPDATE audit SET details = '{"i": 5, "version": 2}' WHERE seq = 6"""],
        6,
        "was modified",
    ),
    "edited time": (
        lambda: ["UPDATE audit SET time = '2020-01-01T00:00:00.000000Z' WHERE seq = 8"],
        8,
        "was modified",
    ),
    "deleted row": (lambda: ["DELETE FROM audit WHERE seq = 3"], 3, "is missing"),
    "reordered rows": (
        lambda: [
            "UPDATE audit SET seq = 100 WHERE seq = 5",
            "UPDATE audit SET seq = 5 WHERE seq = 6",
            "UPDATE audit SET seq = 6 WHERE seq = 100",
        ],
        5,
        "does not follow",
    ),
    "truncated tail": (lambda: ["DELETE FROM audit WHERE seq >= 7"], 7, "truncated"),
    "row appended by hand": (
        lambda: [
            "INSERT INTO audit SELECT 9, time, event, outcome, key_id, client, measurement, "
            "reasons, details, mac, mac FROM audit WHERE seq = 8"
        ],
        9,
        "seq=9 was modified",
    ),
    "malformed details": (
        lambda: ["UPDATE audit SET details = 'not json' WHERE seq = 2"],
        2,
        "malformed",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_is_detected_and_names_the_row(tmp_path: Path, case: str) -> None:
    statements, seq, fragment = TAMPERING[case]
    path = _log(tmp_path)
    _sql(path, *statements())
    with pytest.raises(AuditLogError, match=fragment) as info:
        verify_audit_log(path, MASTER_SECRET)
    assert info.value.seq == seq
    assert f"seq={seq}" in str(info.value)
    assert isinstance(info.value, IntegrityError)


def test_rewritten_chain_without_the_key_is_detected(tmp_path: Path) -> None:
    """Someone who edits a row and recomputes every later MAC with another key."""
    path = _log(tmp_path)
    forger = AuditChain(b"f" * 32, None)
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT seq, time, event, outcome, key_id, client, measurement, "
                        "reasons, details FROM audit ORDER BY seq").fetchall()  # fmt: skip
    with conn:
        for seq, _time, event, _outcome, key_id, client, measurement, reasons, details in rows:
            entry = forger.append(
                time=0.0, event=event, outcome="ok", key_id=key_id, client=client,
                measurement=measurement, reasons=json.loads(reasons), details=json.loads(details),
            )  # fmt: skip
            conn.execute(
                "UPDATE audit SET outcome = 'ok', prev_mac = ?, mac = ? WHERE seq = ?",
                (entry.prev_mac, entry.mac, seq),
            )
    conn.close()
    with pytest.raises(AuditLogError, match="seq=1 was modified"):
        verify_audit_log(path, MASTER_SECRET)


def test_edited_head_is_detected(tmp_path: Path) -> None:
    path = _log(tmp_path)
    _sql(path, "UPDATE meta SET value = replace(value, '\"seq\": 8', '\"seq\": 7') "
               "WHERE name = 'audit_head'")  # fmt: skip
    with pytest.raises(AuditLogError, match="head was modified"):
        verify_audit_log(path, MASTER_SECRET)
    _sql(path, "DELETE FROM meta WHERE name = 'audit_head'")
    with pytest.raises(AuditLogError, match="head is missing"):
        verify_audit_log(path, MASTER_SECRET)


def test_wrong_master_key_and_missing_database(tmp_path: Path) -> None:
    path = _log(tmp_path)
    with pytest.raises(ConfigError, match="another broker master key"):
        verify_audit_log(path, MasterKey.generate())
    with pytest.raises(ConfigError, match="does not exist"):
        verify_audit_log(tmp_path / "nope.db", MASTER_SECRET)
    assert isinstance(MASTER_SECRET, Secret)
    assert "***" in repr(MASTER)
