"""The broker's key administration (``/v1/admin/keys``): the admin credential, and
create, rotate, enable/disable, delete and set the policy of keys, each change stored
with the audit entry that records it."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any

from trustedml._secret import Secret
from trustedml.attestation import Policy
from trustedml.broker._audit import utc_timestamp
from trustedml.broker._errors import Refusal
from trustedml.broker._keys import Key, new_version
from trustedml.broker._ledger import Decision, Ledger
from trustedml.broker._master import MasterKey
from trustedml.broker._messages import bad_request, bearer, check_key_id, parse_object
from trustedml.broker._store import DeleteKey, PutKey, PutVersion
from trustedml.errors import ConfigError, PolicyError

log = logging.getLogger("trustedml.broker")


def parse_policy(value: object) -> Policy | None:
    """The ``policy`` member of an admin request: an appraisal policy, or None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Refusal(
            400, "bad_policy", f"policy: expected a JSON object, got {type(value).__name__}"
        )
    try:
        return Policy.from_dict(value)
    except (PolicyError, ConfigError, ValueError, TypeError) as exc:
        raise Refusal(400, "bad_policy", f"policy: {exc}", [str(exc)]) from None


class KeyAdmin:
    """What an administrator may do to the keys (``keys`` is the service's own table)."""

    def __init__(
        self,
        admin_token: Secret,
        master: MasterKey,
        keys: dict[str, Key],
        ledger: Ledger,
        clock: Callable[[], float],
    ) -> None:
        self._admin_digest = hashlib.sha256(admin_token.reveal()).digest()
        self._master = master
        self._keys = keys
        self._ledger = ledger
        self._clock = clock

    async def check_admin(self, authorization: str | None, client: str, action: str) -> None:
        """Refuse (and audit) a call without the admin token."""
        token = bearer(authorization)
        given = hashlib.sha256((token or "").encode("utf-8", "replace")).digest()
        if token is None or not hmac.compare_digest(given, self._admin_digest):
            refusal = Refusal(
                401,
                "admin_unauthorized",
                "admin call without the admin credential (Authorization: Bearer <admin token>)",
            )
            decision = Decision("admin.refused", client, details={"action": action})
            raise await self._ledger.refused(decision, refusal)

    def _key(self, key_id: str) -> Key:
        check_key_id(key_id)
        key = self._keys.get(key_id)
        if key is None:
            raise Refusal(404, "unknown_key", f"no key {key_id!r}")
        return key

    async def _check_intact(self, key: Key, client: str, action: str) -> None:
        """Refuse (409, audited) to change a key whose stored row does not verify: such
        a key may only be deleted."""
        if key.problems:
            refusal = key.tampered("key.integrity", status=409)
            decision = Decision("key.integrity", client, key.key_id, details={"action": action})
            raise await self._ledger.refused(decision, refusal)

    async def _store(self, key: Key, decision: Decision, *versions: PutVersion) -> dict[str, Any]:
        """Commit the key's new row, MAC'd and bound to the audit entry that records the
        change, its new ``versions`` and that entry, in one transaction; the key's info."""
        audit = self._ledger.entry(decision, "ok")
        row = PutKey(key.sealed_row(self._master.row_key, audit.entry.seq))
        await self._ledger.commit([row, *versions, audit])
        return key.info()

    async def create_key(self, client: str, body: bytes) -> dict[str, Any]:
        doc = parse_object(body)
        key_id = check_key_id(doc.get("key_id"))
        policy = parse_policy(doc.get("policy"))
        if key_id in self._keys:
            raise Refusal(409, "key_exists", f"key {key_id!r} already exists")
        stamp = utc_timestamp(self._clock())
        key = Key(key_id, "enabled", 1, None, None, 1, stamp, stamp)
        key.set_policy(policy)
        version = new_version(self._master, key, 1, stamp)
        self._keys[key_id] = key
        details = {"version": 1, "policy": key.policy_json is not None}
        info = await self._store(
            key, Decision("key.create", client, key_id, details=details), version
        )
        log.info("key created", extra={"key_id": key_id, "client": client})
        return info

    def list_keys(self) -> dict[str, Any]:
        return {"keys": [self._keys[k].info() for k in sorted(self._keys)]}

    def get_key(self, key_id: str) -> dict[str, Any]:
        return self._key(key_id).info()

    async def rotate_key(self, client: str, key_id: str) -> dict[str, Any]:
        key = self._key(key_id)
        await self._check_intact(key, client, "key.rotate")
        stamp = utc_timestamp(self._clock())
        version = key.current_version + 1
        put_version = new_version(self._master, key, version, stamp)
        key.current_version = version
        key.updated_at = stamp
        decision = Decision("key.rotate", client, key_id, details={"version": version})
        info = await self._store(key, decision, put_version)
        log.info("key rotated", extra={"key_id": key_id, "version": version})
        return info

    async def set_state(self, client: str, key_id: str, enabled: bool) -> dict[str, Any]:
        key = self._key(key_id)
        event = "key.enable" if enabled else "key.disable"
        await self._check_intact(key, client, event)
        key.state = "enabled" if enabled else "disabled"
        key.updated_at = utc_timestamp(self._clock())
        info = await self._store(key, Decision(event, client, key_id))
        log.info("key %s", key.state, extra={"key_id": key_id})
        return info

    async def delete_key(self, client: str, key_id: str) -> dict[str, Any]:
        key = self._key(key_id)
        del self._keys[key_id]
        versions = sorted(key.keks)
        decision = Decision("key.delete", client, key_id, details={"versions": versions})
        await self._ledger.ok(decision, [DeleteKey(key_id)])
        log.info("key deleted", extra={"key_id": key_id})
        return {"key_id": key_id, "deleted": True, "versions": versions}

    async def set_policy(self, client: str, key_id: str, body: bytes) -> dict[str, Any]:
        key = self._key(key_id)
        value = parse_object(body)
        if "policy" not in value:
            raise bad_request('request body: expected {"policy": <policy object or null>}')
        policy = parse_policy(value["policy"])
        await self._check_intact(key, client, "key.policy")
        key.set_policy(policy)
        key.policy_revision += 1
        key.updated_at = utc_timestamp(self._clock())
        digest = hashlib.sha256((key.policy_json or "null").encode()).hexdigest()
        details = {"policy_revision": key.policy_revision, "policy_sha256": digest}
        info = await self._store(key, Decision("key.policy", client, key_id, details=details))
        log.info("key policy set", extra={"key_id": key_id, "revision": key.policy_revision})
        return info

    def get_policy(self, key_id: str) -> dict[str, Any]:
        key = self._key(key_id)
        return {
            "key_id": key_id,
            "policy": key.policy.to_dict() if key.policy else None,
            "policy_revision": key.policy_revision,
        }
