"""What the broker promises to keep: across restarts, and across kill -9 under load."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.broker.conftest import (
    MEASUREMENT,
    Broker,
    run_broker_cli,
    save_sim_public_key,
    sim_policy,
    spawn_broker,
    start_broker,
)
from tests.conftest import write_passphrase_file
from trustedml import DataKey, KeyDirectory
from trustedml.attestation import SimKey, SimProvider
from trustedml.broker import (
    BrokerAdminClient,
    BrokerConfig,
    KeyBrokerClient,
    KeyBrokerError,
    verify_audit_log,
)


def test_keys_versions_policies_and_audit_survive_a_restart(
    tmp_path: Path, base_config: BrokerConfig, broker_keys: KeyDirectory, sim_key: SimKey
) -> None:
    db = tmp_path / "broker.db"
    first = start_broker(base_config, broker_keys, sim_key, db)
    key_id = first.new_key()
    disabled = first.new_key()
    client = first.client()
    old = client.generate_data_key(key_id)
    first.admin().rotate_key(key_id)
    new = client.generate_data_key(key_id)
    first.admin().disable_key(disabled)
    first.close_clients()
    first.server.stop()

    second = start_broker(base_config, broker_keys, sim_key, db)
    try:
        keys = {k["key_id"]: k for k in second.admin().list_keys()}
        assert keys[key_id]["versions"] == [1, 2]
        assert keys[key_id]["policy"] == sim_policy_dict()
        assert keys[disabled]["state"] == "disabled"
        client = second.client()
        assert client.unwrap_data_key(key_id, old.wrapped) == old.plaintext
        assert client.unwrap_data_key(key_id, new.wrapped) == new.plaintext
        entries = second.admin().audit(limit=1000)["entries"]
        assert [e["event"] for e in entries].count("broker.start") == 2
    finally:
        second.close_clients()
        second.server.stop()
    assert verify_audit_log(db, base_config.master_key).entries == len(entries)


def sim_policy_dict() -> dict[str, object]:
    return {
        "allow_simulated": True,
        "allow_debug": False,
        "min_tcb_status": "UpToDate",
        "allowed_advisory_ids": [],
        "vmpl": [0],
        "allow": [{"type": "sim", "measurement": MEASUREMENT.hex()}],
    }


def test_a_database_of_another_key_directory_is_refused(
    tmp_path: Path, base_config: BrokerConfig, broker_keys: KeyDirectory, sim_key: SimKey
) -> None:
    db = tmp_path / "broker.db"
    start_broker(base_config, broker_keys, sim_key, db).server.stop()
    other = base_config.replace(master_key=type(base_config.master_key)(b"\x07" * 32))
    with pytest.raises(KeyBrokerError, match="another broker master key"):
        start_broker(other, broker_keys, sim_key, db)


def test_serve_needs_the_right_passphrase(tmp_path: Path, broker_keys: KeyDirectory) -> None:
    wrong = write_passphrase_file(tmp_path / "wrong", "a wrong passphrase")
    result = run_broker_cli(["serve", "--keys", str(broker_keys.path), "--db",
                             str(tmp_path / "b.db"), "--passphrase-file", str(wrong)])  # fmt: skip
    assert result.returncode == 1
    assert "wrong passphrase" in result.stderr
    assert not (tmp_path / "b.db").exists()


@pytest.mark.slow
def test_kill_9_under_load_keeps_every_acknowledged_key(
    tmp_path: Path, base_config: BrokerConfig, broker_keys: KeyDirectory, sim_key: SimKey
) -> None:
    db = tmp_path / "broker.db"
    pub = save_sim_public_key(sim_key, tmp_path / "sim.pub.pem")
    proc = spawn_broker(broker_keys, db, tmp_path / "run1", sim_key_pem=pub)
    ca = broker_keys.ca_cert

    def admin_client(url: str) -> BrokerAdminClient:
        return BrokerAdminClient(url, admin_token=base_config.admin_token, ca=ca, timeout=10)

    def key_client(url: str) -> KeyBrokerClient:
        provider = SimProvider(sim_key, measurement=MEASUREMENT)
        return KeyBrokerClient(url, provider=provider, ca=ca, timeout=10)

    admin = admin_client(proc.url)
    admin.create_key("durable-0", sim_policy())
    created: list[str] = ["durable-0"]
    rotated: dict[str, int] = {}
    released: list[tuple[str, DataKey]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def creator() -> None:
        i = 1
        while not stop.is_set():
            try:
                admin.create_key(f"durable-{i}", sim_policy())
                with lock:
                    created.append(f"durable-{i}")
                if i % 3 == 0:
                    info = admin.rotate_key(f"durable-{i - 1}")
                    with lock:
                        rotated[f"durable-{i - 1}"] = info["current_version"]
            except KeyBrokerError:
                return  # the broker is gone
            i += 1

    def releaser(seed: int) -> None:
        rng = random.Random(seed)
        client = key_client(proc.url)
        try:
            while not stop.is_set():
                with lock:
                    key_id = rng.choice(created)
                data_key = client.generate_data_key(key_id)
                assert client.unwrap_data_key(key_id, data_key.wrapped) == data_key.plaintext
                with lock:
                    released.append((key_id, data_key))
        except KeyBrokerError:
            return
        finally:
            client.close()

    threads = [threading.Thread(target=creator)] + [
        threading.Thread(target=releaser, args=(n,)) for n in range(6)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (len(created) < 30 or len(released) < 100):
        time.sleep(0.05)
    proc.kill()  # SIGKILL, mid-load
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    admin.close()
    assert len(created) >= 30
    assert len(released) >= 100

    proc = spawn_broker(broker_keys, db, tmp_path / "run2", sim_key_pem=pub)
    try:
        admin = admin_client(proc.url)
        present = {k["key_id"]: k for k in admin.list_keys()}
        missing = [k for k in created if k not in present]
        assert not missing, f"acknowledged keys lost: {missing}"
        for key_id, version in rotated.items():
            assert present[key_id]["current_version"] >= version
        client = key_client(proc.url)
        for key_id, data_key in released:
            assert client.unwrap_data_key(key_id, data_key.wrapped) == data_key.plaintext
        client.close()
        admin.close()
    finally:
        assert proc.terminate() == 0

    passphrase = write_passphrase_file(tmp_path / "pp")
    verify = ["audit", "verify", "--db", str(db), "--keys", str(broker_keys.path),
              "--passphrase-file", str(passphrase)]  # fmt: skip
    result = run_broker_cli(verify)
    assert result.returncode == 0, result.stderr
    assert "audit log ok" in result.stderr

    # One audit row edited by hand: verification fails and names it.
    conn = sqlite3.connect(db)
    with conn:
        seq = conn.execute("SELECT seq FROM audit WHERE event = 'unwrap' LIMIT 1 OFFSET 10")
        (target,) = seq.fetchone()
        conn.execute("UPDATE audit SET key_id = 'forged' WHERE seq = ?", (target,))
    conn.close()
    result = run_broker_cli(verify)
    assert result.returncode == 1
    assert f"audit log row seq={target} was modified" in result.stderr


def test_stop_with_idle_clients_still_connected(
    tmp_path: Path, base_config: BrokerConfig, broker_keys: KeyDirectory, sim_key: SimKey
) -> None:
    running = start_broker(base_config, broker_keys, sim_key, tmp_path / "broker.db")
    key_id = running.new_key()
    idle = running.client()
    idle.generate_data_key(key_id)  # leaves a kept-alive TLS connection open
    running.server.stop()  # waits the graceful period, then cuts what is left
    assert not running.service_open()
    running.close_clients()


def test_a_port_in_use_is_refused_cleanly(
    tmp_path: Path, broker: Broker, base_config: BrokerConfig
) -> None:
    from trustedml.broker import BrokerServer, BrokerUnavailableError

    second = BrokerServer(
        base_config.replace(db=str(tmp_path / "other.db"), port=broker.server.port)
    )
    with pytest.raises(BrokerUnavailableError, match="cannot listen"):
        second.start()
    assert not second.service.opened
