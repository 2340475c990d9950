"""The TorchDistributor examples under `--tee sim --broker`: inputs read and model written
with data keys a real key broker releases after attestation, in every training process."""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import os
import pickle
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.broker.conftest import BrokerProcess, sim_parties, spawn_broker
from tests.conftest import DATASETS, run_cli
from tests.ml.test_mnist import idx_bytes
from trustedml import ConfigError, KeyDirectory, KeyRing, KeyStoreError
from trustedml.attestation import SimKey
from trustedml.hazmat.framing import MAGIC
from trustedml.ml._driver import check_model_out
from trustedml.ml._io import check_key
from trustedml.ml._mnist import load_mnist
from trustedml.ml.workloads import lenet, text_classification
from trustedml.runtime import ENV_BROKER_URL, ENV_KEYRING, AttestedKeyStore, job_keystore
from trustedml.tee import ENV_JOB_MEASUREMENT, ENV_SIM_KEY, ENV_TEE

MNIST = DATASETS / "mnist"
REVIEWS = DATASETS / "rotten_tomatoes.csv.bz2"
# The data owner's (simulated) TEE: it encrypts the inputs and reads the model.
OWNER = hashlib.sha384(b"test data owner").hexdigest()


@dataclass
class Broker:
    """A running broker with a sim key it trusts, and the CLI options of each party."""

    process: BrokerProcess
    keys: KeyDirectory
    admin: list[str]
    common: list[str]
    sim_private: Path

    def owner(self) -> list[str]:
        """Options of `encrypt`/`decrypt` for the data owner."""
        return [
            "--broker", self.process.url, "--ca", str(self.keys.ca_cert),
            "--evidence-provider", "sim", "--sim-key", str(self.sim_private),
            "--sim-measurement", OWNER,
        ]  # fmt: skip

    def job(self) -> list[str]:
        """Options of `example`/`measure` for an attested job."""
        return [
            "--tee", "sim", "--broker", self.process.url,
            "--sim-key", str(self.sim_private), *self.common, "--no-ui",
        ]  # fmt: skip

    def create_key(self, key_id: str, allowed: list[str], tmp_path: Path) -> None:
        """The broker key ``key_id``, released to sim evidence of ``allowed`` measurements."""
        policy = tmp_path / f"{key_id}-policy.toml"
        policy.write_text(
            "allow_simulated = true\n"
            + "".join(f'[[allow]]\ntype = "sim"\nmeasurement = "{m}"\n' for m in allowed)
        )
        created = run_cli(["broker", "key", "create", key_id, "--policy", str(policy),
                           *self.admin])  # fmt: skip
        assert created.returncode == 0, created.stderr

    def audit(self) -> list[dict[str, object]]:
        shown = run_cli(["broker", "audit", "show", "--json", "--limit", "1000", *self.admin])
        assert shown.returncode == 0, shown.stderr
        return [json.loads(line) for line in shown.stdout.splitlines()]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    keys, passphrase, sim_private, sim_public = sim_parties(tmp_path)
    process = spawn_broker(keys, tmp_path / "broker.db", tmp_path / "broker",
                           sim_key_pem=sim_public)  # fmt: skip
    try:
        common = ["--keys", str(keys.path), "--passphrase-file", str(passphrase)]
        token = tmp_path / "admin-token"
        made = run_cli(["broker", "admin-token", *common, "--out", str(token)])
        assert made.returncode == 0, made.stderr
        admin = ["--url", process.url, "--ca", str(keys.ca_cert), "--admin-token-file", str(token)]
        yield Broker(process, keys, admin, common, sim_private)
    finally:
        process.terminate()
    verified = run_cli(["broker", "audit", "verify", "--db", str(process.db), *common])
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_without_a_broker_the_kek_keyring_is_the_job_keystore(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_BROKER_URL, raising=False)
    monkeypatch.setenv(ENV_KEYRING, KeyRing({"data": b"\x01" * 32}).export().reveal_text())
    assert isinstance(job_keystore(), KeyRing)
    check_key("data")
    with pytest.raises(ConfigError, match=r"no such key \(it has data; start it with --kek models"):
        check_key("models")
    with pytest.raises(ConfigError, match=r"^--model-key-id models: this job has no such key"):
        check_model_out(Path("model.pt"), "models")
    monkeypatch.delenv(ENV_KEYRING)
    with pytest.raises(KeyStoreError, match="this job has no keys"):
        job_keystore()


def test_with_a_broker_the_job_keystore_attests(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sim_key = tmp_path / "sim-key.pem"
    SimKey.generate().save(sim_key)
    os.chmod(sim_key, 0o600)
    monkeypatch.setenv(ENV_KEYRING, KeyRing({"data": b"\x01" * 32}).export().reveal_text())
    monkeypatch.setenv(ENV_BROKER_URL, "https://127.0.0.1:9")
    monkeypatch.setenv(ENV_TEE, "sim")
    monkeypatch.setenv(ENV_SIM_KEY, str(sim_key))
    monkeypatch.setenv(ENV_JOB_MEASUREMENT, OWNER)
    store = job_keystore()
    # The broker decides, even when a --kek keyring is also there; it is not picklable,
    # so it cannot slip into pyspark's plaintext pickles.
    assert isinstance(store, AttestedKeyStore)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(store)


def _measure(broker: Broker, workload: Path, args: list[str]) -> str:
    measured = run_cli(["measure", *broker.job(), str(workload), *args])
    assert measured.returncode == 0, measured.stderr
    return measured.stdout.strip()


def _output(result: subprocess.CompletedProcess[str]) -> str:
    # spark-submit merges the Python driver's stderr into its stdout.
    return result.stdout + result.stderr


def _releases(entries: list[dict[str, object]], event: str, key_id: str) -> int:
    return sum(
        1 for e in entries if e["event"] == event and e["outcome"] == "ok" and e["key_id"] == key_id
    )


def _subset(tmp_path: Path) -> Path:
    """The first 1,000 training and 500 test images of MNIST, gzip IDX files."""
    plain = tmp_path / "mnist-plain"
    plain.mkdir()
    for split, prefix, count in (("train", "train", 1000), ("test", "t10k", 500)):
        images, labels = load_mnist(MNIST, split, count)  # type: ignore[arg-type]
        (plain / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (plain / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return plain


@pytest.mark.spark
@pytest.mark.slow
def test_lenet_gets_its_keys_from_the_broker(broker: Broker, tmp_path: Path) -> None:
    data = tmp_path / "mnist"
    model = tmp_path / "lenet.pt"
    args = ["--data-path", str(data), "--max-epoch", "1", "--batch-size", "64",
            "--model-out", str(model)]  # fmt: skip
    job = _measure(broker, Path(lenet.__file__), args)
    broker.create_key("mnist", [OWNER, job], tmp_path)
    broker.create_key("models", [OWNER, job], tmp_path)
    enc = run_cli(["encrypt", str(_subset(tmp_path)), str(data), "--key-id", "mnist",
                   *broker.owner()])  # fmt: skip
    assert enc.returncode == 0, enc.stderr
    assert sorted(p.name for p in data.iterdir()) == [
        "t10k-images-idx3-ubyte.gz.tml", "t10k-labels-idx1-ubyte.gz.tml",
        "train-images-idx3-ubyte.gz.tml", "train-labels-idx1-ubyte.gz.tml",
    ]  # fmt: skip

    ran = run_cli(["example", *broker.job(), "lenet", *args])
    said = _output(ran)
    assert ran.returncode == 0, said[-5000:]
    assert "NO HARDWARE PROTECTION" in ran.stderr
    assert "Epoch 1: Top1Accuracy is Accuracy(correct: " in ran.stdout
    assert "count: 500, " in ran.stdout

    saved = tmp_path / "lenet.pt.tml"
    assert sorted(p.name for p in tmp_path.glob("lenet*")) == ["lenet.pt.tml"]
    raw = saved.read_bytes()
    assert raw.startswith(MAGIC)
    assert b"conv1" not in raw
    plain = tmp_path / "lenet-plain.pt"
    dec = run_cli(["decrypt", str(saved), str(plain), *broker.owner()])
    assert dec.returncode == 0, dec.stderr
    state = torch.load(io.BytesIO(plain.read_bytes()), weights_only=True)
    assert state["format"] == "trustedml.lenet5/1"
    assert state["state_dict"]["conv1.weight"].shape == (6, 1, 5, 5)

    entries = broker.audit()
    attests = [e for e in entries if e["event"] == "attest" and e["measurement"] == job]
    # The driver's (input and model key checks), then each training process's own:
    # they inherit the job's environment, no key crosses pyspark's plaintext pickles.
    assert len(attests) >= 3, attests
    assert {e["outcome"] for e in attests} == {"ok"}
    # Each of the 4 files unwrapped by the driver's check and by both training processes.
    assert _releases(entries, "unwrap", "mnist") >= 12
    assert _releases(entries, "datakey", "models") == 1  # rank 0's model

    # Another job (one argument changed: another measurement) gets nothing: one clear
    # line before any training, and no model.
    other = [*args[:-1], str(tmp_path / "stolen.pt")]
    refused = run_cli(["example", *broker.job(), "lenet", *other])
    said = _output(refused)
    assert refused.returncode == 1, said[-5000:]
    errors = [line for line in said.splitlines() if line.startswith("error")]
    assert len(errors) == 1, said[-5000:]
    assert errors[0].startswith(f"error: cannot open input {data}/"), errors[0]
    assert "policy_refused" in errors[0] or "does not satisfy the key policy" in errors[0]
    assert "Traceback" not in said
    assert "Epoch" not in said
    assert not list(tmp_path.glob("stolen*"))
    refusals = [e for e in broker.audit() if e["event"] == "attest" and e["outcome"] != "ok"]
    assert refusals
    assert all(e["measurement"] != job for e in refusals)


@pytest.mark.spark
@pytest.mark.slow
def test_text_classification_gets_its_keys_from_the_broker(broker: Broker, tmp_path: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(bz2.decompress(REVIEWS.read_bytes()).decode())))
    plain = tmp_path / "reviews.csv"
    with plain.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=["category", "text"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows([r for r in rows if r["category"] != "plot"][::10])  # ~1,300 reviews
    encrypted = tmp_path / "reviews.csv.tml"
    model = tmp_path / "text.pt"
    args = ["--file-path", str(encrypted), "--max-epoch", "2", "--model-out", str(model)]
    job = _measure(broker, Path(text_classification.__file__), args)
    broker.create_key("reviews", [OWNER, job], tmp_path)
    broker.create_key("models", [OWNER, job], tmp_path)
    enc = run_cli(["encrypt", str(plain), str(encrypted), "--key-id", "reviews",
                   *broker.owner()])  # fmt: skip
    assert enc.returncode == 0, enc.stderr

    ran = run_cli(["example", *broker.job(), "text-classification", *args])
    said = _output(ran)
    assert ran.returncode == 0, said[-5000:]
    assert "accuracy: " in ran.stdout
    saved = tmp_path / "text.pt.tml"
    assert saved.read_bytes().startswith(MAGIC)
    dec = run_cli(["decrypt", str(saved), str(tmp_path / "text-plain.pt"), *broker.owner()])
    assert dec.returncode == 0, dec.stderr
    state = torch.load(io.BytesIO((tmp_path / "text-plain.pt").read_bytes()), weights_only=True)
    assert state["format"].startswith("trustedml.")
    assert np.asarray(state["vocab"]).size > 100

    entries = broker.audit()
    counts = Counter(
        (e["event"], e["key_id"]) for e in entries if e["outcome"] == "ok" and e["key_id"]
    )
    assert counts[("unwrap", "reviews")] >= 3  # the driver's check and both processes
    assert counts[("datakey", "models")] == 1
