"""LeNet-5 on MNIST, trained data-parallel (DDP, gloo) by 2 CPU processes.

Locally, the launcher (:mod:`trustedml.ml._launch`) reads (decrypts) the inputs once
with :func:`load_inputs` and forks the processes, which share them; on a standalone
cluster, TorchDistributor's tasks each read their own. Either way only paths and
small parameters come from the driver (pyspark pickles TorchDistributor's into a
plaintext temporary file), only metrics go back, and rank 0 encrypts the model itself.
"""

from __future__ import annotations

import functools
import gc
import io
import os
import random
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, TensorDataset

from trustedml.data import SUFFIX
from trustedml.errors import ConfigError, TrustedMLError
from trustedml.ml._configs import NUM_PROCESSES, TrainConfig, TrainResult
from trustedml.ml._io import about, check_inputs, is_encrypted, load_model, save_model
from trustedml.ml._launch import TrainingError
from trustedml.ml._mnist import MnistInputs, load_inputs, load_mnist
from trustedml.ml._profile import mark

__all__ = [
    "LeNet5",
    "MnistInputs",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "check_inputs",
    "evaluate_saved_model",
    "load_inputs",
    "load_lenet",
    "rank_shard",
    "run_distributed",
    "train_lenet",
]

MODEL_FORMAT = "trustedml.lenet5/1"
# The usual MNIST pixel mean and standard deviation.
_MEAN, _STD = 0.1307, 0.3081
_EVAL_BATCH = 1000

R = TypeVar("R")


class LeNet5(nn.Module):
    """Classic LeNet-5: conv 6@5x5 (pad 2), pool, conv 16@5x5, pool, fc 120, 84, 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pooling before ReLU gives the same result (ReLU is monotonic) on a quarter
        # of the values; with channels_last it makes CPU training ~40% faster.
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        logits: torch.Tensor = self.fc3(x)
        return logits


def to_input(images: torch.Tensor) -> torch.Tensor:
    """Normalized float N x 1 x 28 x 28 (channels_last) input from uint8 N x 28 x 28."""
    x = (images.unsqueeze(1).float() / 255.0 - _MEAN) / _STD
    return x.contiguous(memory_format=torch.channels_last)


def channels_last(model: LeNet5) -> LeNet5:
    """``model`` with its conv weights in channels_last memory format (faster on CPU)."""
    # Module.to's type stubs lack the memory_format keyword it accepts.
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]


def accuracy_line(correct: int, count: int) -> str:
    """The origin's (BigDL's) way of printing a top-1 accuracy."""
    return (
        f"Top1Accuracy is Accuracy(correct: {correct}, count: {count}, accuracy: {correct / count})"
    )


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def process_group() -> Iterator[tuple[int, int]]:
    """Join the gloo process group torchrun describes in the environment; yields
    ``(rank, world_size)``."""
    # Two processes share two cores: more threads each would only contend.
    torch.set_num_threads(1)
    dist.init_process_group(backend="gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
        # Neither rank tears its connections down while the other still uses them.
        dist.barrier()
    finally:
        # A DDP model can sit in reference cycles that hold the group: collect them
        # while the interpreter is fully alive, as gloo's teardown at exit aborted
        # once under TorchDistributor ("terminate called without an active exception").
        gc.collect()
        dist.destroy_process_group()


def report_worker_errors(func: Callable[..., R]) -> Callable[..., R]:
    """Turn a trusted-ml error in a training process into one line and exit 1,
    instead of a traceback per process."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        try:
            return func(*args, **kwargs)
        except TrustedMLError as exc:
            rank = os.environ.get("RANK", "?")
            print(f"error (training process {rank}): {exc}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    return wrapper


def run_distributed(train_fn: Callable[..., R], *args: Any) -> R:
    """Run ``train_fn(*args)`` in ``NUM_PROCESSES`` CPU processes with TorchDistributor:
    on this host, or on a standalone cluster's executors when the wire between them is
    protected (:func:`~trustedml.ml._collectives.training_placement`); return their
    (identical) result."""
    from pyspark.ml.torch.distributor import TorchDistributor
    from pyspark.sql import SparkSession

    from trustedml.ml._collectives import checked_placement

    # torchrun would otherwise warn that it set it; each process sets 1 thread anyway.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    spark = SparkSession.getActiveSession()
    placement = "local" if spark is None else checked_placement(spark, "TorchDistributor")
    if placement == "local":
        distributor = TorchDistributor(num_processes=NUM_PROCESSES, local_mode=True, use_gpu=False)
    else:
        from trustedml.ml._torchrun import ClusterTorchDistributor

        distributor = ClusterTorchDistributor(NUM_PROCESSES)
    try:
        result = cast(R, distributor.run(train_fn, *args))
    except RuntimeError as exc:
        # Its message repeats the workers' last 100 lines, already printed above.
        code = re.search(r"return code (-?[0-9]+)", str(exc))
        status = f" with status {code.group(1)}" if code else ""
        raise TrainingError(
            f"distributed training failed: the training processes exited{status} "
            "(their output is above)"
        ) from None
    return result


def _evaluate(
    model: nn.Module, images: npt.NDArray[np.uint8], labels: npt.NDArray[np.uint8]
) -> tuple[int, int]:
    model.eval()
    correct = 0
    with torch.no_grad():
        x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels).long()
        for start in range(0, len(x_all), _EVAL_BATCH):
            x = to_input(x_all[start : start + _EVAL_BATCH])
            y = y_all[start : start + _EVAL_BATCH]
            correct += int((model(x).argmax(dim=1) == y).sum())
    return correct, len(labels)


def _serialize(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save({"format": MODEL_FORMAT, "state_dict": state}, buf)
    return buf.getvalue()


def rank_shard(count: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous share of ``count`` items (the test images): the
    shards of all ranks cover every item exactly once, so counts can be summed."""
    return slice(rank * count // world, (rank + 1) * count // world)


def _fit(
    config: TrainConfig, rank: int, world: int, inputs: MnistInputs
) -> tuple[LeNet5, list[tuple[int, int]]]:
    # DDP lives only in this frame, so that it is gone before the group is destroyed.
    seed_everything(config.seed)
    images, labels = inputs.images, inputs.labels
    test_images, test_labels = inputs.test_images, inputs.test_labels
    shard = rank_shard(len(test_labels), rank, world)

    model = channels_last(LeNet5())
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=config.learning_rate)
    train_x = torch.from_numpy(images)
    train_y = torch.from_numpy(labels).long()
    sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(
        TensorDataset(train_x, train_y), num_replicas=world, rank=rank, seed=config.seed
    )
    per_process = config.batch_size // world
    # DistributedSampler pads every rank to the same length, hence the same steps.
    steps = config.max_epoch * -(-len(sampler) // per_process)
    # Warm-up then annealing: ~0.99 after 2 epochs where a constant rate stalls
    # around 0.984.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=steps, pct_start=0.15
    )

    epochs: list[tuple[int, int]] = []
    for epoch in range(config.max_epoch):
        sampler.set_epoch(epoch)
        model.train()  # the same module DDP wraps
        for batch in torch.split(torch.tensor(list(sampler)), per_process):
            loss = F.cross_entropy(ddp(to_input(train_x[batch])), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            schedule.step()
        mark(f"rank-epoch{epoch + 1}-trained")
        counts = torch.tensor(
            _evaluate(model, test_images[shard], test_labels[shard]), dtype=torch.int64
        )
        dist.all_reduce(counts)
        mark(f"rank-epoch{epoch + 1}-evaluated")
        epochs.append((int(counts[0]), int(counts[1])))
        if rank == 0:
            print(f"Epoch {epoch + 1}: {accuracy_line(*epochs[-1])}", flush=True)
    return model, epochs


@report_worker_errors
def train_lenet(config: TrainConfig, inputs: MnistInputs | None = None) -> TrainResult:
    """Train LeNet-5 in one process of a torchrun group (DDP + DistributedSampler) on
    ``inputs`` (:func:`load_inputs` of ``config``, loaded here when not given); rank 0
    prints the test accuracy per epoch and saves the encrypted model."""
    mark("rank-entered")
    if inputs is None:
        inputs = load_inputs(config)
    with process_group() as (rank, world):
        mark("rank-group-joined")
        model, epochs = _fit(config, rank, world, inputs)
        model_path = None
        if config.model_out is not None:
            model_path = str(saved_path(config.model_out))
            if rank == 0:
                save_model(_serialize(model), config.model_out, config.model_key_id)
                mark("rank-model-saved")
    mark("rank-done")
    # Every rank writes its result to the same file: they must be identical.
    return TrainResult(tuple(epochs), model_path)


def saved_path(model_out: str | os.PathLike[str]) -> Path:
    """Where ``save_model`` puts a model asked for at ``model_out``."""
    path = Path(model_out)
    return path if is_encrypted(path) else path.with_name(path.name + SUFFIX)


def open_model(path: str | os.PathLike[str]) -> bytes:
    """The decrypted bytes of a model file, with errors that name the file."""
    try:
        return load_model(path)
    except TrustedMLError as exc:
        # Same type (a missing key stays KeyNotFoundError), message naming the model.
        raise about(exc, "cannot open model", path) from None


def load_saved(path: str | os.PathLike[str], model_format: str, kind: str) -> dict[str, Any]:
    """What ``torch.save`` wrote to an encrypted model file, checked to be of
    ``model_format`` (else a ConfigError calling it not a ``kind`` model)."""
    data = open_model(path)
    try:
        saved = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # torch raises several unrelated types on bad input
        raise ConfigError(f"{path}: not a saved model ({type(exc).__name__})") from None
    if not isinstance(saved, dict) or saved.get("format") != model_format:
        raise ConfigError(f"{path}: not a {kind} model saved by trusted-ml")
    return saved


def load_lenet(path: str | os.PathLike[str]) -> LeNet5:
    """A LeNet-5 from an encrypted model file (wrong key: IntegrityError)."""
    saved = load_saved(path, MODEL_FORMAT, "LeNet-5")
    model = LeNet5()
    model.load_state_dict(saved["state_dict"])
    return channels_last(model)


def evaluate_saved_model(model_path: str | os.PathLike[str], data_dir: str) -> tuple[int, int]:
    """``(correct, count)`` of an encrypted LeNet-5 model on the MNIST test images."""
    model = load_lenet(model_path)
    images, labels = load_mnist(data_dir, "test")
    return _evaluate(model, images, labels)
