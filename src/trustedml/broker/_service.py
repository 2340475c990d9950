"""The broker's decisions, independent of HTTP: the facade the app calls, and the life
cycle of the store behind it.

Runs on one asyncio event loop. The in-memory state (keys, nonces, sessions, audit
chain head) changes only on that loop, between awaits, and every change to the
database is queued to the group-commit writer in the same order, so memory and disk
never disagree about order. A response that depends on a write is sent only after
that write (and its audit entry) is on disk.

Where each decision lives: challenges, attestation and key release in
broker/_release.py (its state in _sessions.py), administration in _admin.py, the audit
record of both in _ledger.py, request and answer shapes in _messages.py.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import anyio.to_thread

from trustedml._version import __version__
from trustedml.broker._admin import KeyAdmin
from trustedml.broker._audit import AuditChain
from trustedml.broker._check import Sealer, check_state
from trustedml.broker._config import BrokerConfig
from trustedml.broker._keys import Key, load_keys
from trustedml.broker._ledger import Decision, Ledger
from trustedml.broker._master import MasterKey
from trustedml.broker._release import KeyRelease
from trustedml.broker._sessions import Sessions
from trustedml.broker._store import BrokerStore, StoreOp, open_store
from trustedml.broker._writer import GroupCommitWriter
from trustedml.errors import IntegrityError

log = logging.getLogger("trustedml.broker")


class BrokerService:
    """Everything the broker decides, and its store (None: the config's database). HTTP
    lives in :mod:`trustedml.broker._app`, which calls ``key_release`` and ``admin``."""

    def __init__(
        self, config: BrokerConfig, store: BrokerStore | None, clock: Callable[[], float]
    ) -> None:
        self.config = config
        self._master = MasterKey(config.master_key)
        self._store = store if store is not None else open_store(config.db)
        self._keys: dict[str, Key] = {}
        self._sessions = Sessions(config)
        self._ledger = Ledger(clock)
        # What the app calls: the protocol (challenge, attest, datakey/unwrap) and the
        # administration of keys.
        self.key_release = KeyRelease(config, self._keys, self._sessions, self._ledger, clock)
        self.admin = KeyAdmin(config.admin_token, self._master, self._keys, self._ledger, clock)
        self.opened = False

    def __repr__(self) -> str:
        return f"BrokerService(store={self._store!r}, keys={len(self._keys)})"

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
            self._keys.update(load_keys(self._master, state.keys, state.versions, check.keys))
            self._ledger.chain = AuditChain(self._master.audit_key, state.audit_head)
        except BaseException:
            self._store.close()
            raise
        writer = self._ledger.writer = GroupCommitWriter(
            self._store, sealer=Sealer(self._master, check.index, state.audit_head)
        )
        writer.start()
        self.opened = True
        start = Decision("broker.start", details={"version": __version__, "keys": len(self._keys)})
        ops: list[StoreOp] = [self._ledger.entry(start, "ok")]
        for key_id, problems in [*sorted(check.keys.items()), *((k, []) for k in check.missing)]:
            reasons = problems or ["its row was deleted (the sealed key index still names it)"]
            # No secret here: which key, and which check failed.
            log.warning("key %r does not verify: %s", key_id, "; ".join(reasons))
            ops.append(
                self._ledger.entry(Decision("key.integrity", key_id=key_id), "refused", reasons)
            )
        writer.submit(ops).result()
        log.info("broker store open", extra={"db": self.config.db, "keys": len(self._keys)})

    def close(self) -> None:
        """Write what is queued and close the store."""
        if self._ledger.writer is not None:
            self._ledger.writer.close()
            self._ledger.writer = None
        if self.opened:
            self._store.close()
            self.opened = False

    @property
    def store(self) -> BrokerStore:
        return self._store

    async def read_audit(self, after: int, limit: int) -> dict[str, Any]:
        """Audit entries after ``after`` (at most ``limit``) and the head, from one
        snapshot of the store."""
        entries, head = await anyio.to_thread.run_sync(
            functools.partial(self._store.audit_snapshot, after, limit)
        )
        return {
            "entries": [e.to_dict() for e in entries],
            "head": head.to_dict() if head else None,
        }

    def stats(self) -> dict[str, Any]:
        writer = self._ledger.writer
        chain = self._ledger.chain
        return {
            "keys": len(self._keys),
            "sessions": len(self._sessions),
            "outstanding_challenges": self._sessions.outstanding_challenges,
            "audit_seq": chain.seq if chain else 0,
            "write_batches": writer.batches if writer else 0,
            "write_jobs": writer.jobs if writer else 0,
        }


__all__ = ["BrokerService"]
