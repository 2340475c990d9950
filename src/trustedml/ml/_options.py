"""The command-line options the workloads share: their input, their encrypted output and
its key, and the TorchDistributor training settings."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trustedml.ml._datasets import default_dataset, default_help


def add_input(parser: argparse.ArgumentParser, option: str, dataset: str, what: str) -> None:
    """``option``: a path defaulting to ``dataset`` of the repository's datasets/."""
    text = f"{what} ({default_help(dataset)})"
    parser.add_argument(option, type=Path, default=default_dataset(dataset), help=text)


def add_output(
    parser: argparse.ArgumentParser,
    option: str,
    what: str,
    key: tuple[str, str, str],
    metavar: str | None = None,
) -> None:
    """``option``: where to write encrypted (no default), then ``key``'s (option,
    default KEK id, help): the KEK it is encrypted under."""
    parser.add_argument(option, type=Path, default=None, metavar=metavar, help=what)
    key_option, key_id, key_help = key
    parser.add_argument(key_option, default=key_id, help=key_help)


def add_training(
    parser: argparse.ArgumentParser,
    *,
    max_epoch: int,
    batch_size: int,
    learning_rate: float,
    schedule: str,
) -> None:
    """``--max-epoch``, ``--batch-size`` and ``--learning-rate`` of a TorchDistributor
    workload, with its defaults; ``schedule`` says what the learning rate is the rate of."""
    parser.add_argument("--max-epoch", type=int, default=max_epoch)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=batch_size,
        help=f"total batch size, split over the 2 processes (default {batch_size})",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=learning_rate,
        help=f"{schedule} (default {learning_rate})",
    )


def add_model(parser: argparse.ArgumentParser, *, saves: str, evaluates_on: str) -> None:
    """``--model-out``, ``--model-key-id``, ``--evaluate-only`` and ``--seed`` of a
    TorchDistributor workload; ``saves`` is what the model file holds."""
    add_output(
        parser,
        "--model-out",
        f"save {saves} encrypted to PATH.tml",
        ("--model-key-id", "models", "KEK the model is encrypted under (default: models)"),
        metavar="PATH",
    )
    parser.add_argument(
        "--evaluate-only",
        type=Path,
        default=None,
        metavar="MODEL",
        help=f"evaluate an encrypted model on {evaluates_on}, no training",
    )
    parser.add_argument("--seed", type=int, default=42)


def training_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The training-config fields every TorchDistributor workload takes from the options
    of :func:`add_training` and :func:`add_model`."""
    return {
        "max_epoch": args.max_epoch,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "model_out": str(args.model_out.resolve()) if args.model_out else None,
        "model_key_id": args.model_key_id,
        "seed": args.seed,
    }
