"""The broker's record of its decisions: each is an audit entry on the MAC chain, queued
with the state changes it records to the group-commit writer, and on disk before the
client hears the answer (a refusal included)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trustedml.broker._audit import AuditChain
from trustedml.broker._errors import Refusal
from trustedml.broker._store import AppendAudit, StoreOp
from trustedml.broker._writer import GroupCommitWriter

log = logging.getLogger("trustedml.broker")


@dataclass
class Decision:
    """What an audited decision is about: the fields of its audit entry besides the
    outcome and the reasons. A decision fills them in as it learns them (the measurement
    once the evidence verifies), so a refusal records what was known when it was made."""

    event: str
    client: str | None = None
    key_id: str | None = None
    measurement: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Ledger:
    """Appends audit entries and commits them. The service sets ``chain`` and ``writer``
    when it opens its store (and drops the writer when it closes it)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.chain: AuditChain | None = None
        self.writer: GroupCommitWriter | None = None

    def entry(
        self,
        decision: Decision,
        outcome: str,
        reasons: Sequence[str] = (),
        details: dict[str, Any] | None = None,
    ) -> AppendAudit:
        """The next audit entry: ``decision``'s fields, its details unless ``details``
        replaces them."""
        assert self.chain is not None, "broker service is not open"
        return AppendAudit(
            self.chain.append(
                time=self._clock(),
                event=decision.event,
                outcome=outcome,
                key_id=decision.key_id,
                client=decision.client,
                measurement=decision.measurement,
                reasons=reasons,
                details=decision.details if details is None else details,
            )
        )

    async def commit(self, ops: Sequence[StoreOp]) -> None:
        """Wait until ``ops`` are on disk; a store that fails is a 503 (the broker must
        be restarted)."""
        if self.writer is None:
            raise Refusal(503, "unavailable", "the broker is shutting down")
        try:
            await asyncio.wrap_future(self.writer.submit(ops))
        except Exception as exc:
            log.error("store write failed: %s", exc)
            raise Refusal(503, "store_failed", "the broker could not record the decision") from exc

    async def ok(self, decision: Decision, ops: Sequence[StoreOp] = ()) -> None:
        """Record ``decision`` as accepted, after ``ops`` (the changes it made)."""
        await self.commit([*ops, self.entry(decision, "ok")])

    async def refused(self, decision: Decision, refusal: Refusal) -> Refusal:
        """Record ``refusal`` of ``decision`` (its reasons: the message when it gives
        none) and log it; returns the refusal to answer with."""
        reasons = refusal.reasons or (refusal.message,)
        details = {"status": refusal.status, "code": refusal.code, **decision.details}
        await self.commit([self.entry(decision, "refused", reasons, details)])
        log.info(
            "%s refused: %s",
            decision.event,
            refusal.message,
            extra={
                "event": decision.event,
                "code": refusal.code,
                "key_id": decision.key_id,
                "client": decision.client,
            },
        )
        return Refusal(refusal.status, refusal.code, refusal.message, reasons, refusal.headers)
