"""LeNet-5 on MNIST, trained by TorchDistributor (2 CPU processes, gloo, DDP).

trustedml example --keys K --kek models [--kek data] lenet --data-path DIR
    [--max-epoch 2] [--batch-size 128] [--train-limit N] [--model-out PATH]
trustedml example --keys K --kek models lenet --evaluate-only PATH.tml --data-path DIR

DIR holds the four MNIST IDX files, plaintext, gzip or encrypted (``*.tml``).
With ``--tee sim|gramine|cvm --broker URL`` instead of ``--kek``, every key comes from
the broker after attestation, in the driver and in each training process
(docs/spark-data.md, "The ML examples' keys").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trustedml.errors import ConfigError
from trustedml.ml._datasets import default_dataset, default_help, missing_default
from trustedml.ml._driver import check_model_out, run_main, train_on_spark


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lenet", description="Train or evaluate LeNet-5 on MNIST with TorchDistributor."
    )
    parser.add_argument(
        "--data-path",
        type=Path,
        default=default_dataset("mnist"),
        help=f"directory of the MNIST IDX files ({default_help('mnist')})",
    )
    parser.add_argument("--max-epoch", type=int, default=2)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="total batch size, split over the 2 processes (default 128)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=0.006,
        help="peak of Adam's one-cycle schedule (default 0.006)",
    )
    parser.add_argument(
        "--train-limit",
        type=int,
        default=None,
        metavar="N",
        help="train on the first N training images only",
    )
    parser.add_argument(
        "--model-out",
        type=Path,
        default=None,
        metavar="PATH",
        help="save the trained model encrypted to PATH.tml",
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
        help="evaluate an encrypted model on the test images, no training",
    )
    parser.add_argument("--seed", type=int, default=42)
    return parser


def _evaluate(args: argparse.Namespace, data_dir: Path) -> int:
    from trustedml.ml._lenet import accuracy_line, evaluate_saved_model

    correct, count = evaluate_saved_model(args.evaluate_only, str(data_dir))
    print(accuracy_line(correct, count), flush=True)
    return 0


def _train(args: argparse.Namespace, data_dir: Path) -> int:
    from trustedml.ml._lenet import TrainConfig, check_inputs, train_lenet
    from trustedml.ml._mnist import idx_path

    config = TrainConfig(
        data_dir=str(data_dir),
        max_epoch=args.max_epoch,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        train_limit=args.train_limit,
        model_out=str(args.model_out.resolve()) if args.model_out else None,
        model_key_id=args.model_key_id,
        seed=args.seed,
    )
    config.check()
    # Fail here, in one line, rather than in both training processes.
    check_inputs(
        *(idx_path(data_dir, s, k) for s in ("train", "test") for k in ("images", "labels"))
    )
    check_model_out(args.model_out, args.model_key_id)
    return train_on_spark("trustedml-lenet", train_lenet, config)


def main(argv: list[str] | None = None) -> int:
    """Run the workload with command-line arguments ``argv``; returns the exit code."""
    args = _parser().parse_args(argv)

    def body() -> int:
        missing = missing_default("--data-path", args.data_path, default_dataset("mnist"))
        if missing is not None:
            raise ConfigError(missing)
        data_dir = args.data_path.resolve()
        if args.evaluate_only is not None:
            return _evaluate(args, data_dir)
        return _train(args, data_dir)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
