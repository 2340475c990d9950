"""Checking a broker's store offline (``trustedml broker audit verify``) and adopting
a database into row MACs (``trustedml broker migrate``)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trustedml._secret import Secret
from trustedml.broker._audit import AuditVerification
from trustedml.broker._check import StoreCheck, check_state, check_store, migrate_v1
from trustedml.broker._integrity import Seal, write_head_file
from trustedml.broker._master import MasterKey
from trustedml.broker._store import BrokerStore, SQLiteStore
from trustedml.errors import AuditLogError, ConfigError, KeyBrokerError


@contextlib.contextmanager
def _opened(db: str | os.PathLike[str] | BrokerStore, master: MasterKey) -> Iterator[BrokerStore]:
    if isinstance(db, str | os.PathLike):
        path = Path(db)
        if not path.is_file():
            raise ConfigError(f"broker database {path} does not exist")
        store: BrokerStore = SQLiteStore(path)
        owned = True
    else:
        store, owned = db, False
    try:
        check = store.master_check()
        if check is None:
            raise AuditLogError(f"{db}: not a broker database (no master key check value)")
        if not master.matches(check):
            raise ConfigError(
                f"{db}: belongs to another broker master key (another key directory?)"
            )
        yield store
    finally:
        if owned:
            store.close()


def verify_store(
    db: str | os.PathLike[str] | BrokerStore,
    master_key: Secret,
    *,
    expect_head: tuple[int, str] | None = None,
) -> StoreCheck:
    """Check everything a host that can write the database could change: the audit
    chain, its seal and head file (wiped, truncated, older copy restored), the key
    index and every key row. Reports every problem; raises only when ``db`` is not a
    broker database of this master key. Safe while the broker runs."""
    master = MasterKey(master_key)
    with _opened(db, master) as store:
        state = store.state()
        # Read after the state: a running broker may have appended since; check the
        # entries the state's snapshot holds.
        entries, _ = store.audit_snapshot()
        last = state.last_entry[0] if state.last_entry else 0
        entries = [e for e in entries if e.seq <= last]
        return check_store(entries, state, master, expect_head=expect_head)


def verify_audit_log(
    db: str | os.PathLike[str] | BrokerStore,
    master_key: Secret,
    *,
    expect_head: tuple[int, str] | None = None,
) -> AuditVerification:
    """Verify the audit log in ``db`` (a database file or a store) and the store's
    integrity (:func:`verify_store`) against ``master_key``.

    Raises :class:`AuditLogError` listing every problem, ``.seq`` naming the first
    audit row that was edited, deleted or reordered. Safe while the broker runs.
    """
    result = verify_store(db, master_key, expect_head=expect_head)
    if not result.ok:
        raise AuditLogError("; ".join(result.messages()), seq=result.first_bad_seq)
    return AuditVerification(result.entries or 0, result.head)


def migrate_store(db: str | os.PathLike[str], master_key: Secret) -> dict[str, Any]:
    """Bring a database to schema 2 (row MACs, key index, seal, head file).

    Schema 1: its audit chain must verify; its key rows are adopted as they are (check
    them first) and a ``broker.migrate`` audit entry records each key's policy digest.
    Schema 2 whose head file is missing: everything else must verify; the head file is
    written from the database's seal (adopting the database as the current one).
    """
    master = MasterKey(master_key)
    path = Path(db)
    if not path.is_file():
        raise ConfigError(f"broker database {path} does not exist")
    store = SQLiteStore(path)
    try:
        check = store.master_check()
        if check is None or not master.matches(check):
            raise ConfigError(f"{path}: not a database of this broker master key")
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute(
                "SELECT value FROM meta WHERE name = 'schema_version'"
            ).fetchone()[0]
            if version == "1":
                report = migrate_v1(conn, master, time.time())
                conn.execute("COMMIT")
                seal: Seal = report.pop("seal")
                write_head_file(store.head_file, seal)
                return {**report, "schema": 2}
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise KeyBrokerError(f"{path}: migration failed: {exc}") from exc
        finally:
            conn.close()
        state = store.state()
        if state.head_text is not None:
            return {"migrated": False, "schema": 2, "note": "already at schema 2 with a head file"}
        result = check_state(state, master)
        lost = [p for p in result.messages() if "is missing (deleted" not in p]
        if lost or result.seal is None:
            raise AuditLogError(
                f"{path}: not adopting a database that does not verify: "
                + "; ".join(lost or ["it has no seal"])
            )
        write_head_file(store.head_file, result.seal)
        return {"migrated": False, "schema": 2, "head_file": str(store.head_file),
                "audit_seq": result.seal.audit_seq}  # fmt: skip
    finally:
        store.close()
