"""A host that can write the broker's database (but lacks the passphrase) edits it as
root would, with the sqlite3 module: edited, swapped or older key rows are never
released, and a wiped, truncated or rolled-back store is reported."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import shutil
import socket
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tests.broker.conftest import (
    MEASUREMENT,
    OTHER_MEASUREMENT,
    Broker,
    run_broker_cli,
    sim_policy,
    start_broker,
)
from tests.broker.peer import RawPeer
from tests.conftest import FAST_KDF, PASSPHRASE, write_passphrase_file
from trustedml import KeyDirectory, Secret, init_key_directory
from trustedml.attestation import SimKey
from trustedml.broker import (
    ADMIN_TOKEN_SECRET,
    MASTER_KEY_SECRET,
    AuditLogError,
    BrokerConfig,
    BrokerRefusedError,
    verify_audit_log,
)
from trustedml.broker._integrity import HeadWriter, make_seal, read_head_file
from trustedml.broker._verify import verify_store
from trustedml.errors import ConfigError, IntegrityError


@pytest.fixture
def broker(
    tmp_path: Path, base_config: BrokerConfig, broker_keys: KeyDirectory, sim_key: SimKey
) -> Broker:
    running = start_broker(base_config, broker_keys, sim_key, tmp_path / "broker.db")
    yield running  # type: ignore[misc]
    stop(running)


def stop(broker: Broker) -> None:
    broker.close_clients()
    broker.server.stop()


def restart(broker: Broker) -> Broker:
    stop(broker)
    return start_broker(broker.config, broker.keys, broker.sim_key, Path(broker.config.db))


def sql(broker: Broker, *statements: str, params: tuple[object, ...] = ()) -> None:
    """Edit the database as the host's root would (the broker is stopped)."""
    conn = sqlite3.connect(broker.config.db)
    with conn:
        for statement in statements:
            conn.execute(statement, params if "?" in statement else ())
    conn.close()


def row(broker: Broker, key_id: str) -> dict[str, object]:
    conn = sqlite3.connect(broker.config.db)
    conn.row_factory = sqlite3.Row
    found = conn.execute("SELECT * FROM keys WHERE key_id = ?", (key_id,)).fetchone()
    conn.close()
    return dict(found)


def refusal(broker: Broker, key_id: str, measurement: bytes = MEASUREMENT) -> dict[str, object]:
    response = RawPeer(broker, measurement).attest([key_id])
    assert response.status_code == 403, response.text
    doc: dict[str, object] = response.json()
    return doc


def cli_verify(broker: Broker, tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    args = ["audit", "verify", "--db", broker.config.db, "--keys", str(broker.keys.path),
            "--passphrase-file", str(write_passphrase_file(tmp_path / "pp")), *extra]  # fmt: skip
    result = run_broker_cli(args)
    return result.returncode, result.stdout, result.stderr


def test_an_edited_policy_is_never_released(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_id = broker.new_key(sim_policy(MEASUREMENT))
    other = broker.new_key(sim_policy(MEASUREMENT))
    assert refusal(broker, key_id, OTHER_MEASUREMENT)["error"] == "policy_refused"
    stored = str(row(broker, key_id)["policy"])
    assert MEASUREMENT.hex() in stored
    stop(broker)
    # The host allows its own measurement.
    sql(broker, "UPDATE keys SET policy = ? WHERE key_id = ?",
        params=(stored.replace(MEASUREMENT.hex(), OTHER_MEASUREMENT.hex()), key_id))  # fmt: skip
    caplog.set_level(logging.WARNING, logger="trustedml.broker")
    broker = restart(broker)
    try:
        for measurement in (OTHER_MEASUREMENT, MEASUREMENT):
            doc = refusal(broker, key_id, measurement)
            assert doc["error"] == "key_integrity"
            assert "does not verify" in str(doc["message"])
        # Other keys are still served.
        peer = RawPeer(broker)
        assert peer.attest([other]).status_code == 200
        response, _ = peer.release("datakey", other)
        assert response.status_code == 200, response.text
        # Refused releases are logged (no secret) and audited.
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any(key_id in m and "does not verify" in m for m in warnings)
        admin = broker.admin()
        entries = admin.audit(limit=1000)["entries"]
        flagged = [e for e in entries if e["key_id"] == key_id and e["outcome"] == "refused"]
        assert {e["event"] for e in flagged} >= {"key.integrity", "attest"}
        assert any("key_integrity" in json.dumps(e["details"]) for e in flagged)
        # An administrator sees it, cannot change the key, can delete it.
        assert admin.get_key(key_id)["integrity_problems"]
        with pytest.raises(BrokerRefusedError) as info:
            admin.rotate_key(key_id)
        assert (info.value.status, info.value.code) == (409, "key_integrity")
        # Reported by audit verify, while the broker runs.
        with pytest.raises(AuditLogError, match=f"key '{key_id}': row does not verify"):
            verify_audit_log(broker.config.db, broker.config.master_key)
        code, _, err = cli_verify(broker, tmp_path)
        assert code == 1
        assert f"key '{key_id}'" in err
        assert "FAILED" in err
        admin.delete_key(key_id)
        assert verify_store(broker.config.db, broker.config.master_key).ok
    finally:
        stop(broker)


def test_swapped_policy_rows_are_refused_and_both_reported(broker: Broker, tmp_path: Path) -> None:
    mine = broker.new_key(sim_policy(MEASUREMENT))
    theirs = broker.new_key(sim_policy(OTHER_MEASUREMENT))
    a, b = row(broker, mine), row(broker, theirs)
    stop(broker)
    for target, source in ((mine, b), (theirs, a)):
        sql(broker, "UPDATE keys SET policy = ?, mac = ?, row_seq = ? WHERE key_id = ?",
            params=(source["policy"], source["mac"], source["row_seq"], target))  # fmt: skip
    broker = restart(broker)
    try:
        assert refusal(broker, mine, OTHER_MEASUREMENT)["error"] == "key_integrity"
        assert refusal(broker, theirs, MEASUREMENT)["error"] == "key_integrity"
        result = verify_store(broker.config.db, broker.config.master_key)
        assert set(result.keys) == {mine, theirs}
        code, out, _ = cli_verify(broker, tmp_path, "--json")
        assert code == 1
        assert set(json.loads(out)["keys"]) == {mine, theirs}
    finally:
        stop(broker)


def test_an_older_copy_of_a_row_is_refused(broker: Broker) -> None:
    key_id = broker.new_key(sim_policy(OTHER_MEASUREMENT))  # allows the host's job
    old = row(broker, key_id)
    broker.admin().set_policy(key_id, sim_policy(MEASUREMENT))  # the owner narrows it
    assert refusal(broker, key_id, OTHER_MEASUREMENT)["error"] == "policy_refused"
    stop(broker)
    sql(broker, "UPDATE keys SET policy = ?, policy_revision = ?, updated_at = ?, row_seq = ?, "
        "mac = ? WHERE key_id = ?",
        params=(old["policy"], old["policy_revision"], old["updated_at"], old["row_seq"],
                old["mac"], key_id))  # fmt: skip
    broker = restart(broker)
    try:
        assert refusal(broker, key_id, OTHER_MEASUREMENT)["error"] == "key_integrity"
        problems = verify_store(broker.config.db, broker.config.master_key).keys[key_id]
        assert any("older copy of the row was restored" in p for p in problems)
    finally:
        stop(broker)


def test_a_deleted_version_row_and_a_deleted_key_row_are_reported(broker: Broker) -> None:
    rotated = broker.new_key()
    broker.admin().rotate_key(rotated)
    gone = broker.new_key()
    stop(broker)
    sql(broker, "DELETE FROM key_versions WHERE key_id = ? AND version = 1", params=(rotated,))
    sql(broker, "DELETE FROM key_versions WHERE key_id = ?", "DELETE FROM keys WHERE key_id = ?",
        params=(gone,))  # fmt: skip
    result = verify_store(broker.config.db, broker.config.master_key)
    assert result.missing == [gone]
    assert any("expected 1..2" in p for p in result.keys[rotated])


@pytest.mark.parametrize(
    ("statements", "message"),
    [
        (["DELETE FROM audit", "DELETE FROM meta WHERE name = 'audit_head'"], "wiped"),
        (
            ["DELETE FROM audit", "DELETE FROM meta WHERE name IN ('audit_head', 'seal')"],
            "were wiped",
        ),
        (
            [
                "DELETE FROM audit",
                "DELETE FROM key_versions",
                "DELETE FROM keys",
                "DELETE FROM meta WHERE name IN ('audit_head', 'seal', 'key_index')",
            ],
            "were wiped",
        ),
        (["DELETE FROM audit WHERE seq > (SELECT max(seq) - 3 FROM audit)"], "truncated"),
    ],
    ids=["rows-and-head", "rows-head-and-seal", "everything", "last-3-rows"],
)
def test_a_wiped_or_truncated_audit_log_fails(
    broker: Broker, tmp_path: Path, statements: list[str], message: str
) -> None:
    broker.new_key()
    RawPeer(broker).attest([broker.new_key()])
    stop(broker)
    sql(broker, *statements)
    with pytest.raises(AuditLogError, match=message):
        verify_audit_log(broker.config.db, broker.config.master_key)
    code, _, err = cli_verify(broker, tmp_path)
    assert code == 1
    assert message in err
    # The broker refuses to serve from it.
    with pytest.raises(IntegrityError, match=message):
        start_broker(broker.config, broker.keys, broker.sim_key, Path(broker.config.db))


def test_an_older_copy_of_the_database_is_detected(broker: Broker, tmp_path: Path) -> None:
    key_id = broker.new_key(sim_policy(OTHER_MEASUREMENT))
    stop(broker)  # a clean stop folds the WAL into the file
    db, head = Path(broker.config.db), Path(broker.config.db + ".head")
    assert stat.S_IMODE(head.stat().st_mode) == 0o600
    shutil.copy(db, tmp_path / "old.db")
    broker = start_broker(broker.config, broker.keys, broker.sim_key, db)
    broker.admin().set_policy(key_id, sim_policy(MEASUREMENT))
    stop(broker)
    shutil.copy(tmp_path / "old.db", db)
    with pytest.raises(AuditLogError, match="older copy of the database was restored"):
        verify_audit_log(db, broker.config.master_key)
    with pytest.raises(IntegrityError, match="older than its head file"):
        start_broker(broker.config, broker.keys, broker.sim_key, db)


def test_export_head_then_verify_against_it(broker: Broker, tmp_path: Path) -> None:
    broker.new_key()
    db = Path(broker.config.db)
    pp = write_passphrase_file(tmp_path / "pp")
    keys_args = ["--db", str(db), "--keys", str(broker.keys.path), "--passphrase-file", str(pp)]
    stop(broker)
    for name in ("broker.db", "broker.db.head"):
        shutil.copy(db.parent / name, tmp_path / f"old-{name}")
    broker = start_broker(broker.config, broker.keys, broker.sim_key, db)
    broker.new_key()
    result = run_broker_cli(["audit", "export-head", *keys_args])
    assert result.returncode == 0, result.stderr
    exported = result.stdout.strip()
    seq, _, mac = exported.partition(":")
    assert int(seq) > 0
    assert len(mac) == 64
    as_json = run_broker_cli(["audit", "export-head", "--json", *keys_args]).stdout
    assert json.loads(as_json) == {"seq": int(seq), "mac": mac}
    (tmp_path / "head.txt").write_text(as_json)
    broker.new_key()  # the log moves on: it still contains the exported head
    for value in (exported, f"@{tmp_path / 'head.txt'}"):
        result = run_broker_cli(["audit", "verify", "--expect-head", value, *keys_args])
        assert result.returncode == 0, result.stderr
    stop(broker)
    # The host restores the database AND its head file from before the export: only
    # the exported head shows it.
    for name in ("broker.db", "broker.db.head"):
        shutil.copy(tmp_path / f"old-{name}", db.parent / name)
    assert run_broker_cli(["audit", "verify", *keys_args]).returncode == 0
    result = run_broker_cli(["audit", "verify", "--expect-head", exported, *keys_args])
    assert result.returncode == 1
    assert f"does not reach the expected head seq={seq}" in result.stderr
    forged = f"{seq}:{'0' * 64}"
    result = run_broker_cli(["audit", "verify", "--expect-head", forged, *keys_args])
    assert result.returncode == 1
    result = run_broker_cli(["audit", "verify", "--expect-head", "nonsense", *keys_args])
    assert result.returncode == 2


def test_a_missing_head_file_stops_the_broker_until_adopted(broker: Broker, tmp_path: Path) -> None:
    key_id = broker.new_key()
    stop(broker)
    head = Path(broker.config.db + ".head")
    head.unlink()
    with pytest.raises(IntegrityError, match=r"head file .* is missing"):
        start_broker(broker.config, broker.keys, broker.sim_key, Path(broker.config.db))
    pp = write_passphrase_file(tmp_path / "pp")
    result = run_broker_cli(["migrate", "--db", broker.config.db, "--keys",
                             str(broker.keys.path), "--passphrase-file", str(pp)])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert head.exists()
    broker = start_broker(broker.config, broker.keys, broker.sim_key, Path(broker.config.db))
    try:
        assert RawPeer(broker).attest([key_id]).status_code == 200
    finally:
        stop(broker)


def test_a_schema_1_database_is_migrated_once(broker: Broker, tmp_path: Path) -> None:
    key_id = broker.new_key()
    stop(broker)
    # What a broker before row MACs left behind.
    sql(broker, "ALTER TABLE keys DROP COLUMN row_seq", "ALTER TABLE keys DROP COLUMN mac",
        "ALTER TABLE key_versions DROP COLUMN mac",
        "DELETE FROM meta WHERE name IN ('seal', 'key_index')",
        "UPDATE meta SET value = '1' WHERE name = 'schema_version'")  # fmt: skip
    Path(broker.config.db + ".head").unlink()
    with pytest.raises(ConfigError, match="broker migrate"):
        start_broker(broker.config, broker.keys, broker.sim_key, Path(broker.config.db))
    pp = write_passphrase_file(tmp_path / "pp")
    args = ["migrate", "--db", broker.config.db, "--keys", str(broker.keys.path),
            "--passphrase-file", str(pp), "--json"]  # fmt: skip
    result = run_broker_cli(args)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["keys"] == [key_id]
    assert json.loads(run_broker_cli(args).stdout)["migrated"] is False
    broker = start_broker(broker.config, broker.keys, broker.sim_key, Path(broker.config.db))
    try:
        assert RawPeer(broker).attest([key_id]).status_code == 200
        events = [e["event"] for e in broker.admin().audit(limit=1000)["entries"]]
        assert "broker.migrate" in events
        assert verify_store(broker.config.db, broker.config.master_key).ok
    finally:
        stop(broker)


def test_a_serve_that_fails_to_start_leaves_the_vault_unchanged(tmp_path: Path) -> None:
    keys = init_key_directory(tmp_path / "keys", Secret(PASSPHRASE), kdf=FAST_KDF)
    vault = keys.file(keys.manifest.sealed_file)
    before = vault.read_bytes()
    pp = write_passphrase_file(tmp_path / "pp")
    db = tmp_path / "broker.db"
    base = ["serve", "--keys", str(keys.path), "--db", str(db), "--passphrase-file", str(pp)]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run_broker_cli([*base, "--port", str(busy.getsockname()[1])])
    assert result.returncode != 0
    assert vault.read_bytes() == before
    assert not any(tmp_path.glob("broker.db*"))
    bad_sim_key = tmp_path / "bad.pem"
    bad_sim_key.write_text("not a key")
    result = run_broker_cli([*base, "--port", "0", "--trust-sim-key", str(bad_sim_key)])
    assert result.returncode == 2
    assert vault.read_bytes() == before
    opened = keys.unseal(Secret(PASSPHRASE))
    assert MASTER_KEY_SECRET not in opened
    assert ADMIN_TOKEN_SECRET not in opened


def _documented_mac(key: bytes, domain: str, body: dict[str, object]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, domain.encode() + b"\x00" + canonical.encode(), hashlib.sha256).hexdigest()


def test_row_macs_and_seal_follow_the_documented_bytes(broker: Broker) -> None:
    """A verifier written from docs/broker-protocol.md ("Integrity") agrees."""
    key_id = broker.new_key()
    broker.admin().rotate_key(key_id)
    stop(broker)
    master = broker.config.master_key.reveal()

    def derive(info: str) -> bytes:
        return HKDF(hashes.SHA256(), 32, salt=None, info=info.encode()).derive(master)

    row_key, seal_key = derive("trustedml/broker/row-mac/v1"), derive("trustedml/broker/seal/v1")
    conn = sqlite3.connect(broker.config.db)
    conn.row_factory = sqlite3.Row
    versions = []
    query = "SELECT * FROM key_versions WHERE key_id = ? ORDER BY version"
    for v in conn.execute(query, (key_id,)):
        body = {
            "table": "key_versions",
            "key_id": v["key_id"],
            "version": v["version"],
            "wrapped_kek": bytes(v["wrapped_kek"]).hex(),
            "created_at": v["created_at"],
        }
        assert v["mac"] == _documented_mac(row_key, "trustedml/broker/row/v1", body)
        versions.append([v["version"], v["mac"]])
    k = conn.execute("SELECT * FROM keys WHERE key_id = ?", (key_id,)).fetchone()
    columns = ("key_id", "state", "current_version", "policy", "policy_revision",
               "created_at", "updated_at", "row_seq")  # fmt: skip
    body = {name: k[name] for name in columns}
    body |= {"table": "keys", "versions": versions}
    assert k["mac"] == _documented_mac(row_key, "trustedml/broker/row/v1", body)
    meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
    last = conn.execute("SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    conn.close()
    assert json.loads(meta["key_index"]) == {key_id: k["row_seq"]}
    seal = json.loads(meta["seal"])
    assert seal["audit_seq"] == last[0]
    assert seal["audit_mac"] == last[1]
    assert seal["key_index_sha256"] == hashlib.sha256(meta["key_index"].encode()).hexdigest()
    unsigned = {name: value for name, value in seal.items() if name != "mac"}
    assert seal["format"] == "trustedml-broker-seal"
    assert seal["mac"] == _documented_mac(seal_key, "trustedml/broker/seal/v1", unsigned)
    assert Path(broker.config.db + ".head").read_text() == meta["seal"] + "\n"


def test_head_writes_coalesce_and_close_writes_the_newest(tmp_path: Path) -> None:
    # Under load a seal is posted per batch; one write per interval, and the last seal
    # posted is the one on disk after close().
    path = tmp_path / "broker.db.head"
    writer = HeadWriter(path)
    start = time.monotonic()
    for seq in range(1, 301):
        writer.post(make_seal(b"k" * 32, seq, "ab" * 32, "cd" * 32))
        time.sleep(0.001)  # a batch per millisecond, as under load
    posted = time.monotonic() - start
    writer.close()
    assert writer.writes <= 2 + posted / HeadWriter.MIN_INTERVAL
    text = read_head_file(path)
    assert text is not None
    assert json.loads(text)["audit_seq"] == 300
