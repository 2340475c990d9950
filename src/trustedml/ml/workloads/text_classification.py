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
from trustedml.ml._datasets import default_dataset, default_help, missing_default
from trustedml.ml._driver import check_model_out, run_main, train_on_spark

REVIEWS = "rotten_tomatoes.csv.bz2"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="text-classification",
        description="Train or evaluate a bag-of-words sentiment classifier on Rotten Tomatoes.",
    )
    parser.add_argument(
        "--file-path",
        type=Path,
        default=default_dataset(REVIEWS),
        help=f"reviews CSV ({default_help(REVIEWS)})",
    )
    parser.add_argument("--max-epoch", type=int, default=3)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="total batch size, split over the 2 processes (default 64)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=0.015,
        help="AdamW's, decaying linearly to 0 (default 0.015)",
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
    parser.add_argument(
        "--model-out",
        type=Path,
        default=None,
        metavar="PATH",
        help="save the model and vocabulary encrypted to PATH.tml",
    )
    parser.add_argument(
        "--model-key-id",
        default="models",
        help="KEK the model is encrypted under (default: models)",
    )
    parser.add_argument(
        "--evaluate-only",
        type=Path,
        default=None,
        metavar="MODEL",
        help="evaluate an encrypted model on its held-out reviews, no training",
    )
    parser.add_argument("--seed", type=int, default=42)
    return parser


def _evaluate(args: argparse.Namespace, file_path: Path) -> int:
    from trustedml.ml._text import evaluate_text_model

    correct, count = evaluate_text_model(args.evaluate_only, file_path)
    print(f"accuracy: {correct / count:.4f} ({correct} of {count})", flush=True)
    return 0


def _train(args: argparse.Namespace, file_path: Path) -> int:
    from trustedml.ml._lenet import check_inputs
    from trustedml.ml._text import TextTrainConfig, train_text

    config = TextTrainConfig(
        file_path=str(file_path),
        max_epoch=args.max_epoch,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        vocab_size=args.vocab_size,
        embed_dim=args.embed_dim,
        limit=args.limit,
        model_out=str(args.model_out.resolve()) if args.model_out else None,
        model_key_id=args.model_key_id,
        seed=args.seed,
    )
    config.check()
    # Fail here, in one line, rather than in both training processes.
    check_inputs(file_path)
    check_model_out(args.model_out, args.model_key_id)
    return train_on_spark("trustedml-text-classification", train_text, config)


def main(argv: list[str] | None = None) -> int:
    """Run the workload with command-line arguments ``argv``; returns the exit code."""
    args = _parser().parse_args(argv)

    def body() -> int:
        missing = missing_default("--file-path", args.file_path, default_dataset(REVIEWS))
        if missing is not None:
            raise ConfigError(missing)
        file_path = args.file_path.resolve()
        if not file_path.is_file():
            raise ConfigError(f"--file-path {args.file_path}: expected an existing file")
        if args.evaluate_only is not None:
            return _evaluate(args, file_path)
        return _train(args, file_path)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
