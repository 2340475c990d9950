"""`trustedml broker ...` and `encrypt/decrypt --broker` in child processes, against a
broker started with `trustedml broker serve`."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.broker.conftest import (
    MEASUREMENT,
    OTHER_MEASUREMENT,
    BrokerProcess,
    run_broker_cli,
    save_sim_private_key,
    save_sim_public_key,
    spawn_broker,
)
from tests.conftest import PASSPHRASE, run_cli, write_passphrase_file
from trustedml import KeyDirectory, Secret
from trustedml.attestation import SimKey
from trustedml.broker import ADMIN_TOKEN_SECRET


@dataclass
class Setup:
    broker: BrokerProcess
    keys: KeyDirectory
    work: Path
    passphrase: Path
    token_file: Path
    sim_key_file: Path
    policy_file: Path

    def admin_args(self) -> list[str]:
        return [
            "--url", self.broker.url, "--ca", str(self.keys.ca_cert),
            "--admin-token-file", str(self.token_file),
        ]  # fmt: skip

    def verify_args(self) -> list[str]:
        return [
            "audit", "verify", "--db", str(self.broker.db), "--keys", str(self.keys.path),
            "--passphrase-file", str(self.passphrase),
        ]  # fmt: skip

    def broker_args(self, measurement: bytes = MEASUREMENT) -> list[str]:
        return [
            "--broker", self.broker.url, "--ca", str(self.keys.ca_cert),
            "--evidence-provider", "sim", "--sim-key", str(self.sim_key_file),
            "--sim-measurement", measurement.hex(),
        ]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, broker_keys: KeyDirectory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("broker-cli")
    sim_key = SimKey.generate()
    broker = spawn_broker(
        broker_keys,
        work / "broker.db",
        work,
        sim_key_pem=save_sim_public_key(sim_key, work / "sim.pub.pem"),
    )
    passphrase = write_passphrase_file(work / "pp")
    policy = work / "policy.toml"
    policy.write_text(
        f'allow_simulated = true\n[[allow]]\ntype = "sim"\nmeasurement = "{MEASUREMENT.hex()}"\n'
    )
    token_file = work / "admin.token"
    result = run_broker_cli(
        ["admin-token", "--keys", str(broker_keys.path), "--passphrase-file", str(passphrase),
         "--out", str(token_file)]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    yield Setup(
        broker,
        broker_keys,
        work,
        passphrase,
        token_file,
        save_sim_private_key(sim_key, work / "sim.key.pem"),
        policy,
    )
    if broker.proc.poll() is None:
        broker.terminate()


def test_admin_token_file_is_private_and_right(setup: Setup) -> None:
    assert stat.S_IMODE(setup.token_file.stat().st_mode) == 0o600
    expected = setup.keys.unseal(Secret(PASSPHRASE))[ADMIN_TOKEN_SECRET]
    assert setup.token_file.read_bytes().strip() == expected.reveal()
    result = run_broker_cli(
        ["admin-token", "--keys", str(setup.keys.path), "--passphrase-file", str(setup.passphrase)]
    )
    assert result.returncode == 2
    assert "exactly one of --out FILE or --stdout" in result.stderr
    result = run_broker_cli(
        ["admin-token", "--keys", str(setup.keys.path), "--passphrase-file",
         str(setup.passphrase), "--stdout"]
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stdout.strip() == expected.reveal_text()


def test_key_commands(setup: Setup) -> None:
    admin = setup.admin_args()
    result = run_broker_cli(["key", "create", "cli-key", "--policy", str(setup.policy_file),
                             "--json", *admin])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["policy"]["allow_simulated"] is True
    result = run_broker_cli(["key", "create", "cli-key", *admin])
    assert result.returncode == 1
    assert "409" in result.stderr
    listed = json.loads(run_broker_cli(["key", "list", "--json", *admin]).stdout)
    assert "cli-key" in [k["key_id"] for k in listed]
    table = run_broker_cli(["key", "list", *admin])
    assert "cli-key" in table.stdout
    result = run_broker_cli(["key", "rotate", "cli-key", "--json", *admin])
    assert json.loads(result.stdout)["current_version"] == 2
    assert run_broker_cli(["key", "disable", "cli-key", *admin]).returncode == 0
    shown = json.loads(run_broker_cli(["key", "show", "cli-key", *admin]).stdout)
    assert shown["state"] == "disabled"
    assert run_broker_cli(["key", "enable", "cli-key", *admin]).returncode == 0
    policy = json.loads(run_broker_cli(["key", "policy", "show", "cli-key", *admin]).stdout)
    assert policy["policy"]["allow"][0]["measurement"] == MEASUREMENT.hex()
    other = setup.work / "other.json"
    other.write_text(
        json.dumps({"allow_simulated": True, "allow": [{"type": "sim", "measurement": "33" * 32}]})
    )
    assert run_broker_cli(["key", "policy", "set", "cli-key", str(other), *admin]).returncode == 0
    bad = setup.work / "bad.toml"
    bad.write_text("allow_simulated = 3\n")
    result = run_broker_cli(["key", "policy", "set", "cli-key", str(bad), *admin])
    assert result.returncode == 2
    assert "allow_simulated" in result.stderr
    result = run_broker_cli(["key", "delete", "cli-key", *admin])
    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert run_broker_cli(["key", "delete", "cli-key", "--yes", *admin]).returncode == 0
    result = run_broker_cli(["key", "show", "cli-key", *admin])
    assert result.returncode == 1
    assert "404" in result.stderr


def test_admin_commands_need_the_admin_token(setup: Setup, tmp_path: Path) -> None:
    base = ["key", "list", "--url", setup.broker.url, "--ca", str(setup.keys.ca_cert)]
    result = run_broker_cli(base)
    assert result.returncode == 2
    assert "--admin-token-file" in result.stderr
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not the token\n")
    wrong.chmod(0o600)
    result = run_broker_cli([*base, "--admin-token-file", str(wrong)])
    assert result.returncode == 1
    assert "401" in result.stderr
    wrong.chmod(0o644)
    result = run_broker_cli([*base, "--admin-token-file", str(wrong)])
    assert result.returncode == 2
    assert "permissions too open" in result.stderr


def test_encrypt_and_decrypt_through_the_broker(setup: Setup, tmp_path: Path) -> None:
    admin = setup.admin_args()
    assert run_broker_cli(["key", "create", "data-key", "--policy", str(setup.policy_file),
                           *admin]).returncode == 0  # fmt: skip
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.csv").write_bytes(b"x,y\n1,2\n" * 1000)
    (source / "b.txt").write_bytes(os.urandom(5000))
    enc, dec = tmp_path / "enc", tmp_path / "dec"
    result = run_cli(["encrypt", str(source), str(enc), "--key-id", "data-key", "--json",
                      *setup.broker_args()])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert {r["key_id"] for r in json.loads(result.stdout)} == {"data-key"}
    result = run_cli(["decrypt", str(enc), str(dec), *setup.broker_args()])
    assert result.returncode == 0, result.stderr
    for name in ("a.csv", "b.txt"):
        assert (dec / name).read_bytes() == (source / name).read_bytes()
    result = run_cli(["decrypt", str(enc), str(tmp_path / "no"),
                      *setup.broker_args(OTHER_MEASUREMENT)])  # fmt: skip
    assert result.returncode == 1
    assert "403" in result.stderr
    assert "measurement" in result.stderr
    assert not (tmp_path / "no").exists()
    # The CA can come from the key directory.
    args = setup.broker_args()
    ca_at = args.index("--ca")
    del args[ca_at : ca_at + 2]
    result = run_cli(["decrypt", str(enc / "a.csv.tml"), str(tmp_path / "a.csv"),
                      "--keys", str(setup.keys.path), *args])  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_broker_options_are_checked(setup: Setup, tmp_path: Path) -> None:
    source = tmp_path / "x"
    source.write_text("x")
    result = run_cli(["encrypt", str(source), str(tmp_path / "y"), "--key-id", "k",
                      "--broker", setup.broker.url])  # fmt: skip
    assert result.returncode == 2
    assert "--evidence-provider" in result.stderr
    result = run_cli(["encrypt", str(source), str(tmp_path / "y"), "--key-id", "k",
                      "--broker", setup.broker.url, "--evidence-provider", "sim"])  # fmt: skip
    assert result.returncode == 2
    assert "--sim-key" in result.stderr
    result = run_cli(["encrypt", str(source), str(tmp_path / "y"), "--key-id", "k"])
    assert result.returncode == 2
    assert "--broker URL" in result.stderr
    result = run_cli(["encrypt", str(source), str(tmp_path / "y"), "--key-id", "k",
                      "--broker", "http://127.0.0.1:1", "--evidence-provider", "sim",
                      "--sim-key", str(setup.sim_key_file), "--sim-measurement", "11"])  # fmt: skip
    assert result.returncode == 2
    assert "TLS only" in result.stderr


def test_audit_show_and_verify(setup: Setup) -> None:
    result = run_broker_cli(["audit", "show", "--json", "--limit", "5", *setup.admin_args()])
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert entries[0]["event"] == "broker.start"
    assert run_broker_cli(["audit", "show", *setup.admin_args()]).returncode == 0
    result = run_broker_cli([*setup.verify_args(), "--json"])
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is True
    assert doc["entries"] >= len(entries)


def test_json_logs_and_graceful_shutdown(setup: Setup) -> None:
    run_broker_cli(["key", "list", *setup.admin_args()])
    assert setup.broker.terminate() == 0
    lines = [json.loads(line) for line in setup.broker.output().splitlines() if line.strip()]
    messages = [line["message"] for line in lines]
    assert "broker listening" in messages
    assert any("Shutting down" in m for m in messages)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert setup.keys.unseal(Secret(PASSPHRASE))[ADMIN_TOKEN_SECRET].reveal_text() not in (
        setup.broker.output()
    )
    result = run_broker_cli(setup.verify_args())
    assert result.returncode == 0, result.stderr
    assert "audit log ok" in result.stderr
