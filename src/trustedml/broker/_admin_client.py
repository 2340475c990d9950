"""Talking to a key broker's admin API: keys, policies, the audit log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from trustedml._secret import Secret
from trustedml.attestation import Policy
from trustedml.broker._client import CaSource, _Http
from trustedml.data import check_key_id


class BrokerAdminClient:
    """The broker's admin API (keys, policies, audit log), authenticated with the
    admin token from the key directory."""

    def __init__(
        self,
        url: str,
        *,
        admin_token: Secret,
        ca: CaSource = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._http = _Http(url, ca, transport, timeout)
        self._token = admin_token

    def __repr__(self) -> str:
        return f"BrokerAdminClient({self._http.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BrokerAdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self, method: str, path: str, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return self._http.request(
            method, path, json=json, token=self._token.reveal_text(), params=params
        )[1]

    @staticmethod
    def _policy(policy: Policy | Mapping[str, Any] | None) -> Any:
        if isinstance(policy, Policy):
            return policy.to_dict()
        if isinstance(policy, Mapping):
            return dict(policy)
        return policy  # None, or something the broker will refuse with a reason

    def create_key(
        self, key_id: str, policy: Policy | Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return self._call(
            "POST",
            "/v1/admin/keys",
            {"key_id": check_key_id(key_id), "policy": self._policy(policy)},
        )

    def list_keys(self) -> list[dict[str, Any]]:
        keys = self._call("GET", "/v1/admin/keys").get("keys")
        return list(keys) if isinstance(keys, list) else []

    def get_key(self, key_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/admin/keys/{check_key_id(key_id)}")

    def rotate_key(self, key_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/admin/keys/{check_key_id(key_id)}/rotate", {})

    def disable_key(self, key_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/admin/keys/{check_key_id(key_id)}/disable", {})

    def enable_key(self, key_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/admin/keys/{check_key_id(key_id)}/enable", {})

    def delete_key(self, key_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/admin/keys/{check_key_id(key_id)}")

    def set_policy(self, key_id: str, policy: Policy | Mapping[str, Any] | None) -> dict[str, Any]:
        return self._call(
            "PUT", f"/v1/admin/keys/{check_key_id(key_id)}/policy", {"policy": self._policy(policy)}
        )

    def get_policy(self, key_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/admin/keys/{check_key_id(key_id)}/policy")

    def audit(self, after: int = 0, limit: int = 100) -> dict[str, Any]:
        return self._call("GET", "/v1/admin/audit", params={"after": after, "limit": limit})

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/v1/admin/stats")
