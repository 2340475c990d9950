"""The group-commit writer: one thread that commits whatever is queued in one durable
transaction of the broker's store."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable, Sequence

from trustedml.broker._audit import AuditEntry, AuditHead
from trustedml.broker._store import AppendAudit, BrokerStore, SetAuditHead, StoreOp
from trustedml.errors import KeyBrokerError

_STOP = object()


class GroupCommitWriter:
    """One thread that writes queued operations to a :class:`BrokerStore`, committing
    everything queued at that moment in one durable transaction.

    ``sealer`` (:class:`trustedml.broker._check.Sealer`) adds the audit head, key index
    and seal operations each batch needs; without one, ``head_of`` adds the audit head.

    A failed write fails every request of its batch and stops the writer for good:
    the in-memory state is then ahead of the disk, so the broker must restart.
    """

    def __init__(
        self,
        store: BrokerStore,
        *,
        head_of: Callable[[AuditEntry], AuditHead] | None = None,
        sealer: Callable[[Sequence[StoreOp]], list[StoreOp]] | None = None,
        max_batch: int = 2048,
    ) -> None:
        self._store = store
        self._head_of = head_of
        self._sealer = sealer
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="broker-writer", daemon=True)
        self.failed: BaseException | None = None
        self.batches = 0  # transactions committed
        self.jobs = 0  # submissions they carried

    def start(self) -> None:
        self._thread.start()

    def submit(self, ops: Sequence[StoreOp]) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        if self.failed is not None:
            future.set_exception(KeyBrokerError("the broker's store failed; restart the broker"))
        else:
            self._queue.put((tuple(ops), future))
        return future

    def close(self) -> None:
        """Write what is queued, then stop."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            jobs: list[tuple[tuple[StoreOp, ...], concurrent.futures.Future[None]]] = batch  # type: ignore[assignment]
            ops: list[StoreOp] = [op for job_ops, _ in jobs for op in job_ops]
            if self._sealer is not None:
                ops.extend(self._sealer(ops))
            elif self._head_of is not None:
                last = next((op for op in reversed(ops) if isinstance(op, AppendAudit)), None)
                if last is not None:
                    ops.append(SetAuditHead(self._head_of(last.entry)))
            try:
                if self.failed is not None:
                    raise KeyBrokerError("the broker's store failed; restart the broker")
                self._store.write(ops)
            except BaseException as exc:
                self.failed = self.failed or exc
                for _, future in jobs:
                    future.set_exception(exc)
                continue
            self.batches += 1
            self.jobs += len(jobs)
            for _, future in jobs:
                future.set_result(None)
