"""LeNet-5 on MNIST: the model and its files in-process, then the `lenet` workload end
to end through the real CLI in secure mode, its keys from a real key broker after
(simulated) attestation: encrypted inputs and model, and jobs the broker refuses."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch

from tests.conftest import DATASETS, run_cli
from tests.ml.conftest import (
    OWNER,
    Broker,
    error_lines,
    launch,
    output,
    releases,
    run_driver,
    side_by_side,
)
from tests.ml.test_mnist import IMAGES, LABELS, idx_bytes, write_mnist
from trustedml import ConfigError, IntegrityError, KeyRing
from trustedml.hazmat.framing import MAGIC
from trustedml.ml._io import save_model
from trustedml.ml._lenet import (
    MODEL_FORMAT,
    LeNet5,
    TrainConfig,
    _serialize,
    accuracy_line,
    evaluate_saved_model,
    load_lenet,
    saved_path,
    to_input,
)
from trustedml.ml._mnist import load_mnist
from trustedml.ml.workloads import lenet
from trustedml.runtime import ENV_KEYRING

MNIST = DATASETS / "mnist"
ANOTHER_JOB = hashlib.sha384(b"another job").hexdigest()
EPOCH = re.compile(
    r"^Epoch (\d+): Top1Accuracy is Accuracy\(correct: (\d+), count: (\d+), accuracy: [0-9.]+\)$",
    re.MULTILINE,
)


def test_lenet5_is_the_classic_architecture() -> None:
    model = LeNet5()
    # conv1 156 + conv2 2,416 + fc1 48,120 + fc2 10,164 + fc3 850
    assert sum(p.numel() for p in model.parameters()) == 61_706
    x = to_input(torch.from_numpy(IMAGES))
    assert x.shape == (5, 1, 28, 28)
    assert model(x).shape == (5, 10)


def test_accuracy_line_is_the_origins() -> None:
    assert accuracy_line(9488, 10000) == (
        "Top1Accuracy is Accuracy(correct: 9488, count: 10000, accuracy: 0.9488)"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_epoch": 0}, "--max-epoch"),
        ({"batch_size": 63}, "--batch-size: expected a multiple of the 2"),
        ({"learning_rate": 0.0}, "--learning-rate"),
        ({"train_limit": 1}, "--train-limit"),
    ],
)
def test_train_config_checks(changes: dict[str, float], message: str) -> None:
    config = TrainConfig(data_dir="d", **changes)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        config.check()


def test_saved_path() -> None:
    assert saved_path("out/lenet.pt") == Path("out/lenet.pt.tml")
    assert saved_path("out/lenet.pt.tml") == Path("out/lenet.pt.tml")


def test_saved_model_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ring = KeyRing({"models": os.urandom(32)})
    monkeypatch.setenv(ENV_KEYRING, ring.export().reveal_text())
    torch.manual_seed(0)
    model = LeNet5()
    path = save_model(_serialize(model), tmp_path / "m.pt", "models")
    assert path == saved_path(tmp_path / "m.pt")
    assert path.read_bytes().startswith(MAGIC)

    loaded = load_lenet(path)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)
    data = write_mnist(tmp_path / "mnist")
    with torch.no_grad():
        expected = int(
            (model(to_input(torch.from_numpy(IMAGES))).argmax(1).numpy() == LABELS).sum()
        )
    assert evaluate_saved_model(path, str(data)) == (expected, 5)

    # Another key with the same id: a clean IntegrityError naming the model.
    monkeypatch.setenv(ENV_KEYRING, KeyRing({"models": os.urandom(32)}).export().reveal_text())
    with pytest.raises(IntegrityError, match=f"cannot open model {re.escape(str(path))}"):
        load_lenet(path)


def test_load_rejects_other_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ring = KeyRing({"models": os.urandom(32)})
    monkeypatch.setenv(ENV_KEYRING, ring.export().reveal_text())
    buf = io.BytesIO()
    torch.save({"format": "something else", "state_dict": {}}, buf)
    other = save_model(buf.getvalue(), tmp_path / "other.pt", "models")
    with pytest.raises(ConfigError, match="not a LeNet-5 model"):
        load_lenet(other)
    garbage = save_model(b"not a torch file", tmp_path / "garbage.pt", "models")
    with pytest.raises(ConfigError, match="not a saved model"):
        load_lenet(garbage)
    assert MODEL_FORMAT not in garbage.read_bytes().decode("latin-1")


def mnist_copy(directory: Path, train: int) -> Path:
    """MNIST with its first ``train`` training images and the whole test split, the
    training files under the dotted spelling some unpackers use."""
    directory.mkdir()
    images, labels = load_mnist(MNIST, "train", train)
    (directory / "train-images.idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images), 1))
    (directory / "train-labels.idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels), 1))
    for test in MNIST.glob("t10k-*"):
        shutil.copy(test, directory / test.name)
    return directory


@pytest.mark.spark
@pytest.mark.slow
def test_lenet_end_to_end_with_keys_from_the_broker(broker: Broker, tmp_path: Path) -> None:
    data = tmp_path / "mnist"
    model = tmp_path / "lenet.pt"
    saved = saved_path(model)
    args = ["--data-path", str(data), "--max-epoch", "1", "--train-limit", "6000",
            "--batch-size", "64", "--model-out", str(model)]  # fmt: skip
    evaluate = ["--evaluate-only", str(saved), "--data-path", str(MNIST)]
    job, evaluator = side_by_side(
        partial(broker.measure, lenet, args), partial(broker.measure, lenet, evaluate)
    )
    broker.create_key("mnist", [OWNER, job], tmp_path)
    broker.create_key("models", [OWNER, job, evaluator], tmp_path)
    enc = run_cli(["encrypt", str(mnist_copy(tmp_path / "plain", 8000)), str(data),
                   "--key-id", "mnist", *broker.owner()])  # fmt: skip
    assert enc.returncode == 0, enc.stderr
    assert sorted(p.name for p in data.iterdir()) == [
        "t10k-images-idx3-ubyte.gz.tml", "t10k-labels-idx1-ubyte.gz.tml",
        "train-images.idx3-ubyte.gz.tml", "train-labels.idx1-ubyte.gz.tml",
    ]  # fmt: skip

    # Another job (one argument changed: another measurement) gets nothing: one clear
    # line before any training, and no model. It runs beside the real one.
    other = [*args[:-1], str(tmp_path / "stolen.pt")]
    ran, refused = side_by_side(
        partial(launch, ["example", *broker.job(), "lenet", *args]),
        partial(launch, ["example", *broker.job(), "lenet", *other]),
    )
    said = output(ran)
    assert ran.returncode == 0, said[-5000:]
    assert "NO HARDWARE PROTECTION" in ran.stderr
    epochs = EPOCH.findall(ran.stdout)
    assert [(epoch, count) for epoch, _, count in epochs] == [("1", "10000")], ran.stdout
    correct = int(epochs[0][1])
    # 6,000 images, 1 epoch: ~0.94; chance is 0.10.
    assert correct / 10_000 >= 0.90

    said = output(refused)
    assert refused.returncode == 1, said[-5000:]
    errors = error_lines(refused)
    assert len(errors) == 1, said[-5000:]
    assert errors[0].startswith(f"error: cannot open input {data}/"), errors[0]
    assert "policy_refused" in errors[0] or "does not satisfy the key policy" in errors[0]
    assert "Traceback" not in said
    assert "Epoch" not in said
    assert not list(tmp_path.glob("stolen*"))

    # The model: encrypted only, nothing of torch's container or the layers shows.
    assert sorted(p.name for p in tmp_path.glob("lenet*")) == ["lenet.pt.tml"]
    raw = saved.read_bytes()
    assert raw.startswith(MAGIC)
    assert b"PK\x03\x04" not in raw  # torch.save's zip container
    assert b"conv1" not in raw
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(raw), weights_only=True)
    plain = tmp_path / "lenet-plain.pt"
    dec = run_cli(["decrypt", str(saved), str(plain), *broker.owner()])
    assert dec.returncode == 0, dec.stderr
    state = torch.load(io.BytesIO(plain.read_bytes()), weights_only=True)
    assert state["format"] == "trustedml.lenet5/1"
    assert state["state_dict"]["conv1.weight"].shape == (6, 1, 5, 5)

    # --evaluate-only on the plaintext test split: the job it was measured for gets
    # the model key and the training's count; any other job, one line and exit 1.
    right, wrong = side_by_side(
        partial(run_driver, lenet, evaluate, broker.job_env(evaluator), tmp_path),
        partial(run_driver, lenet, evaluate, broker.job_env(ANOTHER_JOB), tmp_path),
    )
    assert right.returncode == 0, output(right)[-3000:]
    assert f"Top1Accuracy is Accuracy(correct: {correct}, count: 10000, " in right.stdout
    assert wrong.returncode == 1, output(wrong)[-3000:]
    assert "Top1Accuracy" not in wrong.stdout
    errors = error_lines(wrong)
    assert len(errors) == 1, output(wrong)
    assert errors[0].startswith(f"error: cannot open model {saved}: "), errors[0]
    assert "policy_refused" in errors[0] or "does not satisfy the key policy" in errors[0]
    assert "Traceback" not in output(wrong)

    entries = broker.audit()
    attests = [e for e in entries if e["event"] == "attest" and e["measurement"] == job]
    # The driver's (input and model key checks), then the training launcher's own (it
    # inherits the job's environment; no key crosses the request it is sent), whose
    # forked training processes use its store.
    assert len(attests) >= 2, attests
    assert {e["outcome"] for e in attests} == {"ok"}
    # Each of the 4 files unwrapped by the driver's check and once for both training
    # processes (the launcher decrypts each input once, before it forks them).
    assert releases(entries, "unwrap", "mnist") == 8
    assert releases(entries, "datakey", "models") == 1  # rank 0's model
    assert releases(entries, "unwrap", "models") >= 2  # the owner's decrypt, the evaluation
    refusals = [e for e in entries if e["event"] == "attest" and e["outcome"] != "ok"]
    assert ANOTHER_JOB in {e["measurement"] for e in refusals}
    assert all(e["measurement"] != job for e in refusals)
