"""The attested pipeline end to end: a real broker, sim evidence, a real Spark job."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.broker.conftest import sim_parties, spawn_broker
from tests.conftest import APPS, DATASETS, run_cli
from trustedml.hazmat.framing import MAGIC

pytestmark = [pytest.mark.spark, pytest.mark.slow]

NYC = DATASETS / "nyc_taxi.csv"
OWNER = hashlib.sha384(b"test data owner").hexdigest()


def test_only_the_measured_job_gets_keys(tmp_path: Path) -> None:
    keys, passphrase, sim_private, sim_public = sim_parties(tmp_path)
    broker = spawn_broker(keys, tmp_path / "broker.db", tmp_path / "broker", sim_key_pem=sim_public)
    try:
        ca = str(keys.ca_cert)
        token = tmp_path / "admin-token"
        common = ["--keys", str(keys.path), "--passphrase-file", str(passphrase)]
        assert run_cli(["broker", "admin-token", *common, "--out", str(token)]).returncode == 0
        admin = ["--url", broker.url, "--ca", ca, "--admin-token-file", str(token)]

        app = shutil.copy(APPS / "attested_job.py", tmp_path / "job.py")
        encrypted = tmp_path / "nyc.csv.tml"
        args = [str(encrypted), str(tmp_path / "out"), "nyc"]
        measured = run_cli(["measure", str(app), *args])
        assert measured.returncode == 0, measured.stderr
        job = measured.stdout.strip()
        policy = tmp_path / "policy.toml"
        policy.write_text(
            "allow_simulated = true\n"
            f'[[allow]]\ntype = "sim"\nmeasurement = "{job}"\n'
            f'[[allow]]\ntype = "sim"\nmeasurement = "{OWNER}"\n'
        )
        created = run_cli(["broker", "key", "create", "nyc", "--policy", str(policy), *admin])
        assert created.returncode == 0, created.stderr

        owner = [
            "--broker", broker.url, "--ca", ca, "--evidence-provider", "sim",
            "--sim-key", str(sim_private), "--sim-measurement", OWNER,
        ]  # fmt: skip
        enc = run_cli(["encrypt", str(NYC), str(encrypted), "--key-id", "nyc", *owner])
        assert enc.returncode == 0, enc.stderr

        submit = [
            "submit", "--tee", "sim", "--broker", broker.url, "--sim-key", str(sim_private),
            *common,
        ]  # fmt: skip
        ran = run_cli([*submit, str(app), *args])
        assert ran.returncode == 0, ran.stdout + ran.stderr[-5000:]
        assert "rows: 10320 days: 215" in ran.stdout
        assert "NO HARDWARE PROTECTION" in ran.stderr
        outputs = [
            p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name[0] not in "._"
        ]
        assert outputs
        assert all(p.read_bytes().startswith(MAGIC) for p in outputs)
        dec = run_cli(["decrypt", str(tmp_path / "out"), str(tmp_path / "plain"), *owner])
        assert dec.returncode == 0, dec.stderr
        text = "".join(p.read_text() for p in (tmp_path / "plain").rglob("*.csv*"))
        assert "2014-07-01," in text

        # One byte changed in the app: another measurement, refused by the broker.
        source = Path(app).read_bytes()
        Path(app).write_bytes(source.replace(b"daily sums", b"daily sumz", 1))
        before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "out").rglob("*"))
        refused = run_cli([*submit, str(app), *args])
        assert refused.returncode != 0
        said = refused.stdout + refused.stderr
        assert "policy_refused" in said
        assert "measurement: expected" in said
        assert job[:16] in said  # the allowed job measurement the broker expected
        after = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "out").rglob("*"))
        assert after == before
    finally:
        broker.terminate()
    verified = run_cli(["broker", "audit", "verify", "--db", str(broker.db), *common])
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_workers_outliving_the_shared_session_attest_themselves(tmp_path: Path) -> None:
    keys, passphrase, sim_private, sim_public = sim_parties(tmp_path)
    broker = spawn_broker(
        keys,
        tmp_path / "broker.db",
        tmp_path / "broker",
        sim_key_pem=sim_public,
        extra=("--token-ttl", "3"),
    )
    try:
        common = ["--keys", str(keys.path), "--passphrase-file", str(passphrase)]
        token = tmp_path / "admin-token"
        assert run_cli(["broker", "admin-token", *common, "--out", str(token)]).returncode == 0
        admin = ["--url", broker.url, "--ca", str(keys.ca_cert), "--admin-token-file", str(token)]
        app, args = str(APPS / "long_job.py"), ["k", "4"]
        job = run_cli(["measure", "--no-ui", app, *args]).stdout.strip()
        policy = tmp_path / "policy.toml"
        policy.write_text(
            f'allow_simulated = true\n[[allow]]\ntype = "sim"\nmeasurement = "{job}"\n'
        )
        created = run_cli(["broker", "key", "create", "k", "--policy", str(policy), *admin])
        assert created.returncode == 0, created.stderr
        submit = ["submit", "--tee", "sim", "--broker", broker.url, "--sim-key", str(sim_private)]
        ran = run_cli([*submit, *common, "--no-ui", app, *args])
        assert ran.returncode == 0, ran.stdout + ran.stderr[-5000:]
        assert "worker keys: 2" in ran.stdout
        audit = run_cli(["broker", "audit", "show", "--json", "--limit", "1000", *admin])
        assert audit.returncode == 0, audit.stderr
        entries = [json.loads(line) for line in audit.stdout.splitlines()]
        attests = [e for e in entries if e["event"] == "attest"]
        # The driver's, then at least one of the workers' own (and the driver's renewal).
        assert len(attests) >= 3
        assert {e["outcome"] for e in attests} == {"ok"}
    finally:
        broker.terminate()
