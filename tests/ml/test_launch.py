"""The local training launcher: inputs loaded (decrypted) once and shared by the forked
ranks, torchrun's environment, failures stopping every rank, nothing left running."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from tests.ml.test_mnist import idx_bytes
from trustedml import KeyRing, encrypt_file
from trustedml.ml._configs import TrainConfig
from trustedml.ml._launch import Entry, Launcher, TrainingError
from trustedml.ml._lenet import rank_shard
from trustedml.ml._profile import ENV_PROFILE, MARK_LINE
from trustedml.runtime import ENV_KEYRING

TARGETS = "tests.ml.launch_targets"
LENET = Entry("trustedml.ml._lenet", "train_lenet", "load_inputs", "trustedml.ml._mnist")


@pytest.fixture(autouse=True)
def _profiled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_PROFILE, "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # The launcher imports the targets by name, from the repository root.
    monkeypatch.chdir(Path(__file__).resolve().parents[2])


def marks(output: str) -> list[tuple[str, int]]:
    return [(name, int(pid)) for name, _, pid in MARK_LINE.findall(output)]


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("world", [1, 2, 3, 7])
@pytest.mark.parametrize("count", [0, 1, 10, 10_000, 10_001])
def test_rank_shards_cover_every_test_image_once(count: int, world: int) -> None:
    covered = [i for rank in range(world) for i in range(count)[rank_shard(count, rank, world)]]
    assert covered == list(range(count))


def test_ranks_are_forked_with_torchruns_environment(capfd: pytest.CaptureFixture[str]) -> None:
    with Launcher(Entry(TARGETS, "report", "preload"), ("hello",)) as launcher:
        result = launcher.go()
    # Rank 0's result: a child of the launcher, which made the inputs once.
    assert result["tag"] == "hello"
    assert result["rank"] == 0
    assert result["world"] == 2
    assert result["parent"] == result["inputs"]["pid"]
    assert result["inputs"] == {"tag": "hello", "pid": result["inputs"]["pid"]}
    said = marks(capfd.readouterr().out)
    ranks = {pid for name, pid in said if name == "rank-entered"}
    assert not ranks  # the targets mark nothing; the launcher does
    names = [name for name, _ in said]
    # The inputs load while the training module is imported: either may come first.
    assert names[0] == "launcher-process-start"
    assert sorted(names[1:3]) == ["launcher-imported", "launcher-inputs-loaded"]
    assert names[3:] == ["launcher-go"]
    assert gone(result["pid"])
    assert gone(result["inputs"]["pid"])


def test_a_failing_rank_stops_the_others(capfd: pytest.CaptureFixture[str]) -> None:
    failed = pytest.raises(TrainingError, match=r"exited with status 3 \(their output is above\)")
    with Launcher(Entry(TARGETS, "fail_on_rank"), (3, 1)) as launcher, failed:
        launcher.go()
    launcher_pid = next(pid for name, pid in marks(capfd.readouterr().out) if name == "launcher-go")
    assert gone(launcher_pid)


def test_cancelled_before_go_trains_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    launcher = Launcher(Entry(TARGETS, "report", "preload"), ("x",))
    launcher.cancel()
    said = [name for name, _ in marks(capfd.readouterr().out)]
    assert "launcher-go" not in said


def small_mnist(directory: Path, ring: KeyRing) -> Path:
    """An encrypted MNIST of 512 training and 200 test images (the real ones)."""
    from tests.conftest import DATASETS
    from trustedml.ml._mnist import load_mnist

    directory.mkdir()
    for split, prefix, count in (("train", "train", 512), ("test", "t10k", 200)):
        images, labels = load_mnist(DATASETS / "mnist", split, count)  # type: ignore[arg-type]
        for kind, ndim, array in (("images", 3, images), ("labels", 1, labels)):
            plain = directory / f"{prefix}-{kind}-idx{ndim}-ubyte"
            plain.write_bytes(idx_bytes(array))
            encrypt_file(plain, plain.with_name(plain.name + ".tml"), key_id="data",
                         keystore=ring, log2_chunk=16)  # fmt: skip
            plain.unlink()
    return directory


def test_lenet_decrypts_each_input_once_for_both_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    ring = KeyRing({"data": os.urandom(32)})
    monkeypatch.setenv(ENV_KEYRING, ring.export().reveal_text())
    data = small_mnist(tmp_path / "mnist", ring)
    config = TrainConfig(data_dir=str(data), max_epoch=1, batch_size=32)
    with Launcher(LENET, (config,)) as run:
        result = run.go()
    output = capfd.readouterr().out
    said = marks(output)
    launcher = next(pid for name, pid in said if name == "launcher-process-start")
    reads = sorted((name, pid) for name, pid in said if name.startswith("input-read:"))
    # Every file read (decrypted) once, by the launcher; never again by a rank.
    assert reads == sorted((f"input-read:{p.name}", launcher) for p in data.iterdir()), output
    ranks = {pid for name, pid in said if name == "rank-entered"}
    assert len(ranks) == 2
    assert launcher not in ranks
    # The two test shards are counted once each: 200 images in all.
    assert [count for _, count in result.epochs] == [200]
    assert re.search(r"^Epoch 1: Top1Accuracy is Accuracy\(correct: \d+, count: 200, ", output,
                     re.MULTILINE)  # fmt: skip
    assert result.model_path is None
    assert all(gone(pid) for pid in (launcher, *ranks))


def test_a_wrong_key_fails_in_the_launcher_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    data = small_mnist(tmp_path / "mnist", KeyRing({"data": os.urandom(32)}))
    monkeypatch.setenv(ENV_KEYRING, KeyRing({"data": os.urandom(32)}).export().reveal_text())
    config = TrainConfig(data_dir=str(data), max_epoch=1, batch_size=32)
    failed = pytest.raises(TrainingError, match="exited with status 1")
    with Launcher(LENET, (config,)) as run, failed:
        run.go()
    output = capfd.readouterr().out
    errors = [line for line in output.splitlines() if line.startswith("error")]
    assert len(errors) == 1, output
    assert errors[0].startswith(f"error (training launcher): {data}/train-images-idx3-ubyte.tml: ")
    assert "Traceback" not in output
    assert "rank-entered" not in output


def test_no_copy_of_decrypted_idx() -> None:
    from trustedml.ml._mnist import parse_idx

    raw = np.frombuffer(idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4)), np.uint8).copy()
    parsed = parse_idx(raw, "x", 3)
    assert np.shares_memory(parsed, raw)
    assert parsed.flags.writeable
