"""The embedded SQLite store and the group-commit writer, on real SQLite files."""

from __future__ import annotations

import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from trustedml.broker import BrokerStore, KeyBrokerError, SQLiteStore, open_store
from trustedml.broker._audit import AuditChain
from trustedml.broker._master import MasterKey
from trustedml.broker._store import (
    AppendAudit,
    DeleteKey,
    KeyRow,
    PutKey,
    PutVersion,
    SetAuditHead,
    VersionRow,
)
from trustedml.broker._writer import GroupCommitWriter
from trustedml.errors import ConfigError

MASTER = MasterKey(MasterKey.generate())


def _store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "broker.db")
    store.initialize(MASTER.check_value)
    return store


def _key(key_id: str = "k1", version: int = 1, state: str = "enabled") -> KeyRow:
    return KeyRow(key_id, state, version, None, 1, "t0", "t1")


def test_wal_mode_full_sync_and_private_files(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert isinstance(store, BrokerStore)
    store.write([PutKey(_key())])
    conn = sqlite3.connect(tmp_path / "broker.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with store._reader() as reader:
        assert reader.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    for name in ("broker.db", "broker.db-wal"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    store.close()


def test_keys_versions_and_delete_round_trip(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.write(
        [
            PutKey(_key()),
            PutVersion(VersionRow("k1", 1, b"wrapped-1", "t0")),
            PutKey(_key("k2")),
            PutVersion(VersionRow("k2", 1, b"wrapped-2", "t0")),
        ]
    )
    store.write([PutVersion(VersionRow("k1", 2, b"wrapped-3", "t2")), PutKey(_key(version=2))])
    keys, versions = store.load_keys()
    assert [(k.key_id, k.current_version) for k in keys] == [("k1", 2), ("k2", 1)]
    assert [(v.key_id, v.version, v.wrapped_kek) for v in versions] == [
        ("k1", 1, b"wrapped-1"),
        ("k1", 2, b"wrapped-3"),
        ("k2", 1, b"wrapped-2"),
    ]
    store.write([DeleteKey("k1")])
    keys, versions = store.load_keys()
    assert [k.key_id for k in keys] == ["k2"]
    assert [v.key_id for v in versions] == ["k2"]
    store.close()


def test_a_write_is_all_or_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.write([PutKey(_key()), PutVersion(VersionRow("k1", 1, b"w", "t0"))])
    with pytest.raises(KeyBrokerError, match="write failed"):
        store.write([PutKey(_key("k2")), PutVersion(VersionRow("k1", 1, b"duplicate", "t0"))])
    assert [k.key_id for k in store.load_keys()[0]] == ["k1"]
    store.close()


def test_audit_entries_and_head_are_stored(tmp_path: Path) -> None:
    store = _store(tmp_path)
    chain = AuditChain(MASTER.audit_key, None)
    entries = [chain.append(time=1.0 + i, event="challenge", outcome="ok") for i in range(3)]
    store.write([*(AppendAudit(e) for e in entries), SetAuditHead(chain.head())])
    read, head = store.audit_snapshot()
    assert read == entries
    assert head == chain.head()
    assert store.audit_head() == chain.head()
    assert store.audit_snapshot(after=1, limit=1)[0] == entries[1:2]
    store.close()


def test_another_master_key_is_refused(tmp_path: Path) -> None:
    _store(tmp_path).close()
    store = SQLiteStore(tmp_path / "broker.db")
    with pytest.raises(KeyBrokerError, match="another broker master key"):
        store.initialize(MasterKey(MasterKey.generate()).check_value)
    store.close()


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(KeyBrokerError):
        SQLiteStore(tmp_path / "junk.db").initialize(MASTER.check_value)


def test_open_store_accepts_paths_and_sqlite_urls_only(tmp_path: Path) -> None:
    for target in (tmp_path / "a.db", f"sqlite:///{tmp_path / 'b.db'}"):
        store = open_store(target)
        assert isinstance(store, SQLiteStore)
        store.close()
    with pytest.raises(ConfigError, match="SQLAlchemy"):
        open_store("postgresql://user@host/db")
    with pytest.raises(ConfigError, match="does not exist"):
        open_store(tmp_path / "missing" / "x.db")


def test_group_commit_batches_concurrent_writes(tmp_path: Path) -> None:
    store = _store(tmp_path)
    chain = AuditChain(MASTER.audit_key, None)
    writer = GroupCommitWriter(store, head_of=chain.head_of)
    writer.start()
    lock = threading.Lock()
    futures = []

    def submit(n: int) -> None:
        for _ in range(n):
            with lock:  # the event loop's single thread, in the broker
                entry = chain.append(time=1.0, event="unwrap", outcome="ok")
                futures.append(writer.submit([AppendAudit(entry)]))

    threads = [threading.Thread(target=submit, args=(50,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for future in futures:
        future.result(timeout=60)
    writer.close()
    assert writer.jobs == 400
    assert writer.batches <= 400
    entries, head = store.audit_snapshot()
    assert [e.seq for e in entries] == list(range(1, 401))
    assert head == chain.head()
    store.close()


def test_a_failed_write_stops_the_writer(tmp_path: Path) -> None:
    store = _store(tmp_path)
    writer = GroupCommitWriter(store)
    writer.start()
    writer.submit([PutKey(_key()), PutVersion(VersionRow("k1", 1, b"w", "t"))]).result(10)
    bad = writer.submit([PutVersion(VersionRow("k1", 1, b"again", "t"))])
    with pytest.raises(KeyBrokerError):
        bad.result(10)
    with pytest.raises(KeyBrokerError, match="restart the broker"):
        writer.submit([PutKey(_key("k2"))]).result(10)
    writer.close()
    store.close()


def test_sealed_writes_keep_a_private_head_file_in_step(tmp_path: Path) -> None:
    from trustedml.broker._check import Sealer, check_state
    from trustedml.broker._integrity import Seal

    store = _store(tmp_path)
    head = tmp_path / "broker.db.head"
    chain = AuditChain(MASTER.audit_key, None)
    sealer = Sealer(MASTER, {}, None)
    first = [AppendAudit(chain.append(time=1.0, event="broker.start", outcome="ok"))]
    store.write([*first, *sealer(first)])
    # The first seal is on disk when write() returns (no head writer yet to wait for).
    assert Seal.from_text(head.read_text(), "head").audit_seq == 1
    assert stat.S_IMODE(head.stat().st_mode) == 0o600
    for i in range(20):
        ops = [AppendAudit(chain.append(time=2.0 + i, event="challenge", outcome="ok"))]
        store.write([*ops, *sealer(ops)])
    behind = Seal.from_text(head.read_text(), "head").audit_seq
    assert 1 <= behind <= 21  # the head thread may trail, never lead
    store.close()  # writes the last seal
    assert Seal.from_text(head.read_text(), "head").audit_seq == 21
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    reopened = SQLiteStore(tmp_path / "broker.db")
    assert check_state(reopened.state(), MASTER).ok
    reopened.close()
