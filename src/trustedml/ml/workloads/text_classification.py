"""Rotten Tomatoes sentiment (fresh/rotten) with a bag-of-words EmbeddingBag
classifier trained by TorchDistributor (2 CPU processes, gloo, DDP).

trustedml example --keys K --kek models [--kek data] text-classification
    [--file-path FILE] [--max-epoch 3] [--batch-size 64] [--limit N] [--model-out PATH]
trustedml example --keys K --kek models text-classification --evaluate-only PATH.tml

FILE is the reviews CSV (columns category, text), plaintext, bz2 or encrypted
(``*.tml``); 20% of it, stratified by label, is held out to measure accuracy.
With ``--tee sim|gramine|cvm --broker URL`` instead of ``--kek``, every key comes from
the broker after attestation (docs/spark-data.md, "The ML examples' keys").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trustedml.errors import ConfigError
from trustedml.ml._datasets import default_dataset
from trustedml.ml._driver import check_and_train, resolved_input, run_workload
from trustedml.ml._options import add_input, add_model, add_training, training_fields

REVIEWS = "rotten_tomatoes.csv.bz2"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="text-classification",
        description="Train or evaluate a bag-of-words sentiment classifier on Rotten Tomatoes.",
    )
    add_input(parser, "--file-path", REVIEWS, "reviews CSV")
    add_training(
        parser,
        max_epoch=3,
        batch_size=64,
        learning_rate=0.015,
        schedule="AdamW's, decaying linearly to 0",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=10_000,
        help="most frequent training words kept (default 10000)",
    )
    parser.add_argument("--embed-dim", type=int, default=32)
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="use a seeded sample of N reviews only"
    )
    add_model(
        parser,
        saves="the model and vocabulary",
        evaluates_on="its held-out reviews",
    )
    return parser


def _evaluate(args: argparse.Namespace, file_path: Path) -> int:
    from trustedml.ml._text import evaluate_text_model

    correct, count = evaluate_text_model(args.evaluate_only, file_path)
    print(f"accuracy: {correct / count:.4f} ({correct} of {count})", flush=True)
    return 0


def _train(args: argparse.Namespace, file_path: Path) -> int:
    from trustedml.ml._configs import TextTrainConfig
    from trustedml.ml._launch import Entry

    config = TextTrainConfig(
        file_path=str(file_path),
        vocab_size=args.vocab_size,
        embed_dim=args.embed_dim,
        limit=args.limit,
        **training_fields(args),
    )
    entry = Entry("trustedml.ml._text", "train_text", "prepare_text")
    return check_and_train("trustedml-text-classification", entry, config, args, file_path)


def _reviews(args: argparse.Namespace) -> Path:
    file_path = resolved_input("--file-path", args.file_path, default_dataset(REVIEWS))
    if not file_path.is_file():
        raise ConfigError(f"--file-path {args.file_path}: expected an existing file")
    return file_path


def main(argv: list[str] | None = None) -> int:
    """Run the workload with command-line arguments ``argv``; returns the exit code."""
    return run_workload(_parser().parse_args(argv), _reviews, _evaluate, _train)


if __name__ == "__main__":
    sys.exit(main())
