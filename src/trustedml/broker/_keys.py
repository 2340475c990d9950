"""The broker's keys in memory: each key's KEK versions (unwrapped under the master key),
its release policy, the MACs of its stored rows, and why a row that does not verify is
never trusted."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trustedml.attestation import Policy
from trustedml.broker._errors import Refusal
from trustedml.broker._integrity import key_row_mac, version_row_mac
from trustedml.broker._master import MasterKey, kek_aad_name
from trustedml.broker._store import KeyRow, PutVersion, VersionRow
from trustedml.errors import ConfigError, IntegrityError, PolicyError
from trustedml.hazmat import keywrap

log = logging.getLogger("trustedml.broker")


@dataclass
class Key:
    """One key of the broker; ``keks`` maps each version to its KEK."""

    key_id: str
    state: str
    current_version: int
    policy: Policy | None
    policy_json: str | None
    policy_revision: int
    created_at: str
    updated_at: str
    keks: dict[int, bytes] = field(default_factory=dict, repr=False)
    row_seq: int = 0
    mac: str = ""
    version_macs: dict[int, str] = field(default_factory=dict)
    # Why the stored row does not verify: the key is never released (docs: Integrity).
    problems: list[str] = field(default_factory=list)

    def row(self) -> KeyRow:
        return KeyRow(
            self.key_id,
            self.state,
            self.current_version,
            self.policy_json,
            self.policy_revision,
            self.created_at,
            self.updated_at,
            self.row_seq,
            self.mac,
        )

    def sealed_row(self, row_key: bytes, seq: int) -> KeyRow:
        """The row as written by the audit entry ``seq``, with its MAC."""
        self.row_seq = seq
        self.mac = key_row_mac(row_key, self.row(), self.version_macs)
        return self.row()

    def set_policy(self, policy: Policy | None) -> None:
        """Replace the policy (and its stored JSON); the revision is the caller's."""
        self.policy = policy
        self.policy_json = None if policy is None else json.dumps(policy.to_dict(), sort_keys=True)

    def info(self) -> dict[str, Any]:
        """What the admin API shows of the key (never a KEK)."""
        out = {
            "key_id": self.key_id,
            "state": self.state,
            "current_version": self.current_version,
            "versions": sorted(self.keks),
            "policy": self.policy.to_dict() if self.policy else None,
            "policy_revision": self.policy_revision,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if self.problems:
            out["integrity_problems"] = list(self.problems)
        return out

    def tampered(self, event: str, status: int = 403) -> Refusal:
        """The refusal of a key whose stored row does not verify (docs/broker-protocol.md,
        "Integrity"), with the failed checks; logged as a warning."""
        message = (
            f"key {self.key_id!r} is refused: its stored row does not verify under the "
            "broker master key (the database was modified); an administrator must "
            "delete it or restore the database"
        )
        log.warning(
            "%s refused: key %r does not verify: %s",
            event,
            self.key_id,
            "; ".join(self.problems),
            extra={"event": event, "code": "key_integrity", "key_id": self.key_id},
        )
        return Refusal(
            status,
            "key_integrity",
            message,
            [message, *(f"key {self.key_id!r}: {p}" for p in self.problems)],
        )


def load_keys(
    master: MasterKey,
    rows: Sequence[KeyRow],
    versions: Sequence[VersionRow],
    problems: Mapping[str, list[str]],
) -> dict[str, Key]:
    """The stored keys with their KEKs unwrapped. ``problems`` are the integrity check's
    findings per key; a key that fails to unwrap or lacks its current version gets its
    own, and is kept (so it can be shown and deleted) but never released."""
    keys: dict[str, Key] = {}
    for row in rows:
        bad = list(problems.get(row.key_id, ()))
        policy = None
        if row.policy is not None:
            try:
                policy = Policy.from_dict(json.loads(row.policy))
            except (ValueError, PolicyError, ConfigError, TypeError) as exc:
                if not bad:  # a row that verifies holds what the broker wrote
                    raise ConfigError(
                        f"stored policy of key {row.key_id!r} is invalid: {exc}"
                    ) from None
        keys[row.key_id] = Key(
            row.key_id,
            row.state,
            row.current_version,
            policy,
            row.policy,
            row.policy_revision,
            row.created_at,
            row.updated_at,
            row_seq=row.row_seq,
            mac=row.mac,
            problems=bad,
        )
    for v in versions:
        key = keys.get(v.key_id)
        if key is None:
            continue
        key.version_macs[v.version] = v.mac
        try:
            key.keks[v.version] = keywrap.unwrap(
                master.kek_wrapping_key, kek_aad_name(v.key_id, v.version), v.wrapped_kek
            )
        except IntegrityError:
            key.problems.append(f"version {v.version} does not unwrap under the broker master key")
    for key in keys.values():
        if key.current_version not in key.keks and not key.problems:
            key.problems.append(f"lacks its current version {key.current_version}")
    return keys


def new_version(master: MasterKey, key: Key, version: int, stamp: str) -> PutVersion:
    """A fresh KEK as ``version`` of ``key`` (in memory), and its MAC'd row to store."""
    kek = os.urandom(keywrap.KEK_SIZE)
    key.keks[version] = kek
    wrapped = keywrap.wrap(master.kek_wrapping_key, kek_aad_name(key.key_id, version), kek)
    row = VersionRow(key.key_id, version, wrapped, stamp)
    mac = version_row_mac(master.row_key, row)
    key.version_macs[version] = mac
    return PutVersion(dataclasses.replace(row, mac=mac))
