"""What the driver hands the training processes and gets back: small parameters and
metrics, in a module without torch, so that the driver never imports it."""

from __future__ import annotations

from dataclasses import dataclass

from trustedml.errors import ConfigError

__all__ = [
    "NUM_PROCESSES",
    "TextTrainConfig",
    "TextTrainResult",
    "TrainConfig",
    "TrainResult",
    "check_training_options",
]

NUM_PROCESSES = 2


def check_training_options(
    max_epoch: int, batch_size: int, learning_rate: float, num_processes: int
) -> None:
    """The option checks every distributed training workload shares."""
    if max_epoch < 1:
        raise ConfigError(f"--max-epoch: expected at least 1, got {max_epoch}")
    if batch_size < num_processes or batch_size % num_processes:
        raise ConfigError(
            f"--batch-size: expected a multiple of the {num_processes} training "
            f"processes, got {batch_size}"
        )
    if not learning_rate > 0:
        raise ConfigError(f"--learning-rate: expected > 0, got {learning_rate}")


@dataclass(frozen=True)
class TrainConfig:
    """What the LeNet training processes get: paths and small parameters, never data."""

    data_dir: str
    max_epoch: int = 2
    batch_size: int = 128  # in total, split evenly over the processes
    learning_rate: float = 0.006  # the peak of the one-cycle schedule
    train_limit: int | None = None
    model_out: str | None = None
    model_key_id: str = "models"
    seed: int = 42

    def check(self, num_processes: int = NUM_PROCESSES) -> None:
        """Raise ConfigError on a value training would choke on later."""
        check_training_options(self.max_epoch, self.batch_size, self.learning_rate, num_processes)
        if self.train_limit is not None and self.train_limit < num_processes:
            raise ConfigError(
                f"--train-limit: expected at least {num_processes} images, got {self.train_limit}"
            )


@dataclass(frozen=True)
class TrainResult:
    """Per-epoch test results ``(correct, count)`` and where the model went."""

    epochs: tuple[tuple[int, int], ...]
    model_path: str | None

    @property
    def accuracy(self) -> float:
        correct, count = self.epochs[-1]
        return correct / count


@dataclass(frozen=True)
class TextTrainConfig:
    """What the text training processes get: paths and small parameters, never data."""

    file_path: str
    max_epoch: int = 3
    batch_size: int = 64  # in total, split evenly over the processes
    learning_rate: float = 0.015
    # Strong decoupled weight decay is what keeps 10k reviews from being memorized.
    weight_decay: float = 0.3
    vocab_size: int = 10_000
    embed_dim: int = 32
    limit: int | None = None
    model_out: str | None = None
    model_key_id: str = "models"
    seed: int = 42
    test_fraction: float = 0.2

    def check(self, num_processes: int = NUM_PROCESSES) -> None:
        """Raise ConfigError on a value training would choke on later."""
        check_training_options(self.max_epoch, self.batch_size, self.learning_rate, num_processes)
        if self.vocab_size < 1 or self.embed_dim < 1:
            raise ConfigError(
                f"--vocab-size and --embed-dim: expected >= 1, got {self.vocab_size} "
                f"and {self.embed_dim}"
            )
        if self.limit is not None and self.limit < 10:
            raise ConfigError(f"--limit: expected at least 10 reviews, got {self.limit}")


@dataclass(frozen=True)
class TextTrainResult:
    """Mean training loss per epoch, held-out ``(correct, count)``, the model's path."""

    losses: tuple[float, ...]
    correct: int
    count: int
    model_path: str | None

    @property
    def accuracy(self) -> float:
        return self.correct / self.count
