"""Load: 200 concurrent clients, each attesting once and unwrapping 10 times, no errors."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.broker.conftest import MEASUREMENT, save_sim_public_key, sim_policy, spawn_broker
from trustedml import KeyDirectory
from trustedml.attestation import SimKey, SimProvider
from trustedml.broker import BrokerAdminClient, BrokerConfig, KeyBrokerClient

CLIENTS = 200
UNWRAPS = 10


@pytest.mark.slow
def test_200_concurrent_clients_10_unwraps_each(
    tmp_path: Path, base_config: BrokerConfig, broker_keys: KeyDirectory, sim_key: SimKey
) -> None:
    pub = save_sim_public_key(sim_key, tmp_path / "sim.pub.pem")
    proc = spawn_broker(broker_keys, tmp_path / "broker.db", tmp_path, sim_key_pem=pub)
    ca = broker_keys.ca_cert
    try:
        with BrokerAdminClient(proc.url, admin_token=base_config.admin_token, ca=ca) as admin:
            admin.create_key("load", sim_policy())
        provider = SimProvider(sim_key, measurement=MEASUREMENT)
        with KeyBrokerClient(proc.url, provider=provider, ca=ca) as client:
            data_key = client.generate_data_key("load")
        start = threading.Barrier(CLIENTS)

        def one_client(_: int) -> int:
            ok = 0
            with KeyBrokerClient(proc.url, provider=provider, ca=ca, timeout=120) as client:
                start.wait(timeout=120)
                client.attest(["load"])
                for _ in range(UNWRAPS):
                    if client.unwrap_data_key("load", data_key.wrapped) == data_key.plaintext:
                        ok += 1
            return ok

        errors: list[BaseException] = []
        results: list[int] = []
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            futures = [pool.submit(one_client, n) for n in range(CLIENTS)]
            for future in futures:
                try:
                    results.append(future.result(timeout=600))
                except Exception as exc:  # counted, then reported all at once
                    errors.append(exc)
        assert not errors, f"{len(errors)} clients failed, first: {errors[0]!r}"
        assert sum(results) == CLIENTS * UNWRAPS
    finally:
        assert proc.terminate() == 0
