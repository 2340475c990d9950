"""Fixtures for the key broker: a key directory, a sim key, real brokers on 127.0.0.1."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAST_KDF, PASSPHRASE, ROOT, cli_env, write_passphrase_file
from trustedml import KeyDirectory, Secret, init_key_directory
from trustedml.attestation import SimKey, SimProvider
from trustedml.broker import BrokerAdminClient, BrokerConfig, BrokerServer, KeyBrokerClient

MEASUREMENT = bytes.fromhex("11" * 32)
OTHER_MEASUREMENT = bytes.fromhex("22" * 32)
_ids = itertools.count(1)


def sim_policy(measurement: bytes = MEASUREMENT, *, allow_simulated: bool = True) -> dict[str, Any]:
    return {
        "allow_simulated": allow_simulated,
        "allow": [{"type": "sim", "measurement": measurement.hex()}],
    }


def new_key_id(prefix: str = "key") -> str:
    return f"{prefix}-{next(_ids)}"


class Clock:
    """A clock the test moves by hand; starts at the real time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def broker_keys(tmp_path_factory: pytest.TempPathFactory) -> KeyDirectory:
    """A key directory of the broker's own (the broker adds its secrets to the vault)."""
    keys = init_key_directory(
        tmp_path_factory.mktemp("broker-keys") / "keys", Secret(PASSPHRASE), kdf=FAST_KDF
    )
    return keys


@pytest.fixture(scope="session")
def sim_key() -> SimKey:
    return SimKey.generate()


@pytest.fixture(scope="session")
def base_config(broker_keys: KeyDirectory, sim_key: SimKey) -> BrokerConfig:
    return BrokerConfig.from_key_directory(
        broker_keys,
        Secret(PASSPHRASE),
        db="unused",
        port=0,
        trusted_sim_keys=(sim_key.public_key_pem(),),
    )


@dataclass
class Broker:
    """A running in-process broker and what a test needs to talk to it."""

    server: BrokerServer
    keys: KeyDirectory
    sim_key: SimKey
    config: BrokerConfig
    clock: Clock
    clients: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ca(self) -> Path:
        return self.keys.ca_cert

    def admin(self) -> BrokerAdminClient:
        client = BrokerAdminClient(self.url, admin_token=self.config.admin_token, ca=self.ca)
        self.clients.append(client)
        return client

    def provider(self, measurement: bytes = MEASUREMENT) -> SimProvider:
        return SimProvider(self.sim_key, measurement=measurement)

    def client(self, measurement: bytes = MEASUREMENT, **kwargs: Any) -> KeyBrokerClient:
        client = KeyBrokerClient(
            self.url, provider=self.provider(measurement), ca=self.ca, **kwargs
        )
        self.clients.append(client)
        return client

    def new_key(self, policy: dict[str, Any] | None = None, *, prefix: str = "key") -> str:
        key_id = new_key_id(prefix)
        self.admin().create_key(key_id, sim_policy() if policy is None else policy)
        return key_id

    def service_open(self) -> bool:
        return self.server.service.opened

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()


def start_broker(
    config: BrokerConfig, keys: KeyDirectory, sim_key: SimKey, db: Path, **changes: Any
) -> Broker:
    clock = Clock()
    cfg = config.replace(db=str(db), **{"graceful_shutdown": 2.0, **changes})
    server = BrokerServer(cfg, clock=clock).start()
    return Broker(server, keys, sim_key, cfg, clock)


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory,
    base_config: BrokerConfig,
    broker_keys: KeyDirectory,
    sim_key: SimKey,
) -> Iterator[Broker]:
    """One broker shared by a module's tests (each test makes its own keys)."""
    db = tmp_path_factory.mktemp("broker-db") / "broker.db"
    running = start_broker(base_config, broker_keys, sim_key, db, challenge_rate=1000.0)
    yield running
    running.close_clients()
    running.server.stop()


@pytest.fixture
def fresh_broker(
    tmp_path: Path, base_config: BrokerConfig, broker_keys: KeyDirectory, sim_key: SimKey
) -> Iterator[Broker]:
    """A broker of the test's own, with a fresh database."""
    running = start_broker(base_config, broker_keys, sim_key, tmp_path / "broker.db")
    yield running
    running.close_clients()
    running.server.stop()


# -- brokers in a child process (`trustedml broker serve`) ---------------------------------

# `trustedml broker ...` through its click group, whether or not the top-level CLI
# registers it yet.
BROKER_CLI = (
    sys.executable,
    "-c",
    "from trustedml.cli.broker import broker_group; broker_group(prog_name='trustedml broker')",
)


def run_broker_cli(
    args: list[str], *, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BROKER_CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(),
        cwd=ROOT,
        check=False,
    )


@dataclass
class BrokerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    db: Path
    log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def spawn_broker(
    keys: KeyDirectory,
    db: Path,
    workdir: Path,
    *,
    sim_key_pem: Path | None = None,
    extra: tuple[str, ...] = (),
    timeout: float = 60.0,
) -> BrokerProcess:
    """Start `python -m trustedml broker serve` and wait until it listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    passphrase = write_passphrase_file(workdir / "passphrase")
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    log = workdir / f"broker-{time.monotonic_ns()}.log"
    args = [
        *BROKER_CLI, "serve",
        "--keys", str(keys.path), "--db", str(db), "--port", "0",
        "--port-file", str(port_file), "--passphrase-file", str(passphrase), "--json",
        "--challenge-rate", "10000", "--challenge-burst", "10000",
    ]  # fmt: skip
    if sim_key_pem is not None:
        args += ["--trust-sim-key", str(sim_key_pem)]
    args += list(extra)
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=cli_env(), cwd=ROOT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return BrokerProcess(proc, int(port_file.read_text()), db, log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError(f"broker did not start:\n{log.read_text(errors='replace')}")


def save_sim_public_key(sim_key: SimKey, path: Path) -> Path:
    path.write_bytes(sim_key.public_key_pem())
    return path


def save_sim_private_key(sim_key: SimKey, path: Path) -> Path:
    sim_key.save(path)
    os.chmod(path, 0o600)
    return path


def sim_parties(tmp_path: Path) -> tuple[KeyDirectory, Path, Path, Path]:
    """A key directory, its passphrase file, and a sim key (private, public PEM)."""
    keys = init_key_directory(tmp_path / "keys", Secret(PASSPHRASE), kdf=FAST_KDF)
    passphrase = write_passphrase_file(tmp_path / "passphrase")
    sim = SimKey.generate()
    sim_private = tmp_path / "sim-key.pem"
    sim.save(sim_private)
    os.chmod(sim_private, 0o600)
    sim_public = tmp_path / "sim-pub.pem"
    sim_public.write_bytes(sim.public_key_pem())
    return keys, passphrase, sim_private, sim_public
