"""LeNet-5 on MNIST: the model and its files in-process, then the `lenet` workload end
to end through the real CLI in secure mode (encrypted inputs and model)."""

from __future__ import annotations

import io
import os
import pickle
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.conftest import DATASETS, FAST_KDF, PASSPHRASE, run_cli
from tests.ml.conftest import MLKeys
from tests.ml.test_mnist import IMAGES, LABELS, write_mnist
from trustedml import (
    ConfigError,
    IntegrityError,
    KeyRing,
    LocalKeyStore,
    Secret,
    encrypt_file,
    init_key_directory,
)
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
from trustedml.runtime import ENV_KEYRING

MNIST = DATASETS / "mnist"
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


@pytest.fixture(scope="module")
def other_keys(
    tmp_path_factory: pytest.TempPathFactory, session_passphrase_file: Path
) -> list[str]:
    """CLI options of a second key directory with its own KEK ``models``."""
    path = tmp_path_factory.mktemp("other-keys") / "keys"
    keys = init_key_directory(path, Secret(PASSPHRASE), kdf=FAST_KDF)
    LocalKeyStore(keys, Secret(PASSPHRASE)).create_kek("models")
    return ["--keys", str(path), "--passphrase-file", str(session_passphrase_file),
            "--kek", "models", "--no-ui"]  # fmt: skip


def run_cli_both(
    first: list[str], second: list[str]
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """Two CLI runs side by side: most of each is a JVM starting up."""
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(run_cli, first), pool.submit(run_cli, second)
        return a.result(), b.result()


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    # spark-submit merges the Python driver's stderr into its stdout.
    output = result.stdout + result.stderr
    return [line for line in output.splitlines() if line.startswith("error")]


@pytest.mark.spark
@pytest.mark.slow
def test_lenet_end_to_end(ml_keys: MLKeys, other_keys: list[str], tmp_path: Path) -> None:
    # Encrypted inputs, the training files under the dotted spelling some unpackers use.
    data = tmp_path / "mnist"
    data.mkdir()
    for src in sorted(MNIST.glob("*-ubyte.gz")):
        name = src.name.replace("-idx", ".idx") if src.name.startswith("train") else src.name
        encrypt_file(src, data / f"{name}.tml", key_id="data", keystore=ml_keys.store)
    model = tmp_path / "lenet.pt"
    result = run_cli(["example", *ml_keys.submit_args(), "lenet", "--data-path", str(data),
                      "--max-epoch", "1", "--train-limit", "6000", "--batch-size", "64",
                      "--model-out", str(model)])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    epochs = EPOCH.findall(result.stdout)
    assert [(epoch, count) for epoch, _, count in epochs] == [("1", "10000")], result.stdout
    correct = int(epochs[0][1])
    # 6,000 images, 1 epoch: ~0.94; chance is 0.10.
    assert correct / 10_000 >= 0.90

    saved = saved_path(model)
    assert saved.is_file()
    assert not model.exists()
    raw = saved.read_bytes()
    assert raw.startswith(MAGIC)
    assert b"PK\x03\x04" not in raw  # torch.save's zip container
    assert b"conv1" not in raw
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(raw), weights_only=True)

    evaluate = ["lenet", "--evaluate-only", str(saved), "--data-path", str(MNIST)]
    right, wrong = run_cli_both(
        ["example", *ml_keys.submit_args(), *evaluate], ["example", *other_keys, *evaluate]
    )
    assert right.returncode == 0, right.stderr[-3000:]
    assert f"Top1Accuracy is Accuracy(correct: {correct}, count: 10000, " in right.stdout
    assert wrong.returncode == 1, wrong.stderr[-3000:]
    assert "Top1Accuracy" not in wrong.stdout
    assert error_lines(wrong) == [
        f"error: cannot open model {saved}: cannot unwrap the data key with key-encryption "
        "key 'models' (wrong key, or the wrapped key was modified)"
    ]
    assert "Traceback" not in wrong.stdout + wrong.stderr
