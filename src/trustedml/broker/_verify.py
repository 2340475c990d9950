"""Checking a broker's audit log offline (``trustedml broker audit verify``)."""

from __future__ import annotations

import os
from pathlib import Path

from trustedml._secret import Secret
from trustedml.broker._audit import AuditVerification, verify_entries
from trustedml.broker._errors import AuditLogError
from trustedml.broker._master import MasterKey
from trustedml.broker._store import BrokerStore, SQLiteStore
from trustedml.errors import ConfigError


def verify_audit_log(
    db: str | os.PathLike[str] | BrokerStore, master_key: Secret
) -> AuditVerification:
    """Verify every entry of the audit log in ``db`` (a database file or a store)
    against the MAC chain keyed by ``master_key``.

    Raises :class:`AuditLogError` naming the first row that was edited, deleted or
    reordered (``.seq``), or saying the log was truncated. Safe while the broker runs.
    """
    master = MasterKey(master_key)
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
        entries, head = store.audit_snapshot()
        return verify_entries(entries, master.audit_key, head)
    finally:
        if owned:
            store.close()
