"""A minimal protocol peer written from docs/broker-protocol.md (no KeyBrokerClient),
so tests can send exactly the requests they mean, including wrong ones."""

from __future__ import annotations

import base64
import os
from typing import Any

import httpx
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.broker.conftest import MEASUREMENT, Broker
from trustedml.attestation import SimKey, SimProvider
from trustedml.broker import client_ssl_context
from trustedml.hazmat import envelope


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


class RawPeer:
    def __init__(
        self,
        broker: Broker,
        measurement: bytes = MEASUREMENT,
        sim_key: SimKey | None = None,
        job_measurement: bytes | None = None,
    ) -> None:
        self.http = httpx.Client(
            base_url=broker.url, verify=client_ssl_context(broker.ca), timeout=30
        )
        broker.clients.append(self.http)
        self.provider = SimProvider(sim_key or broker.sim_key, measurement=measurement)
        self.private_key = envelope.generate_private_key()
        self.public_key = envelope.public_key_bytes(self.private_key)
        self.job = job_measurement
        self.token: str | None = None
        self.session_key: AESGCM | None = None

    def challenge(self) -> bytes:
        response = self.http.post("/v1/challenge", json={})
        assert response.status_code == 200, response.text
        return unb64(response.json()["nonce"])

    def attest_body(
        self,
        nonce: bytes,
        key_ids: list[str],
        *,
        bind_public_key: bytes | None = None,
        report_data: bytes | None = None,
    ) -> dict[str, Any]:
        if report_data is None:
            report_data = envelope.report_data(nonce, bind_public_key or self.public_key, self.job)
        body: dict[str, Any] = {
            "nonce": b64(nonce),
            "evidence": b64(self.provider.get_evidence(report_data)),
            "client_public_key": b64(self.public_key),
            "key_ids": key_ids,
        }
        if self.job is not None:
            body["job_measurement"] = self.job.hex()
        return body

    def attest(self, key_ids: list[str], **kwargs: Any) -> httpx.Response:
        nonce = self.challenge()
        response = self.http.post("/v1/attest", json=self.attest_body(nonce, key_ids, **kwargs))
        if response.status_code == 200:
            doc = response.json()
            self.token = doc["token"]
            info = envelope.session_info(nonce, envelope.token_digest(self.token))
            sealed = unb64(doc["sealed_session_key"])
            self.session_key = AESGCM(envelope.open_sealed(self.private_key, sealed, info))
        return response

    def release(
        self,
        operation: str,
        key_id: str,
        *,
        token: str | None = None,
        public_key: bytes | None = None,
        wrapped: bytes | None = None,
    ) -> tuple[httpx.Response, bytes]:
        request_id = os.urandom(16)
        body: dict[str, Any] = {
            "client_public_key": b64(public_key or self.public_key),
            "request_id": b64(request_id),
        }
        if wrapped is not None:
            body["wrapped"] = b64(wrapped)
        token = token or self.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self.http.post(f"/v1/keys/{key_id}/{operation}", json=body, headers=headers)
        return response, request_id

    def open(
        self, operation: str, key_id: str, response: httpx.Response, request_id: bytes
    ) -> bytes:
        doc = response.json()
        assert self.token is not None
        assert self.session_key is not None
        info = envelope.envelope_info(
            operation, key_id, doc["version"], request_id, envelope.token_digest(self.token)
        )
        return envelope.open_data_key(self.session_key, unb64(doc["sealed_key"]), info)
