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

from trustedml.ml._datasets import default_dataset
from trustedml.ml._driver import check_and_train, resolved_input, run_workload
from trustedml.ml._options import add_input, add_model, add_training, training_fields
from trustedml.ml._profile import mark, mark_process_start


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lenet", description="Train or evaluate LeNet-5 on MNIST with TorchDistributor."
    )
    add_input(parser, "--data-path", "mnist", "directory of the MNIST IDX files")
    add_training(
        parser,
        max_epoch=2,
        batch_size=128,
        learning_rate=0.006,
        schedule="peak of Adam's one-cycle schedule",
    )
    parser.add_argument(
        "--train-limit",
        type=int,
        default=None,
        metavar="N",
        help="train on the first N training images only",
    )
    add_model(parser, saves="the trained model", evaluates_on="the test images")
    return parser


def _evaluate(args: argparse.Namespace, data_dir: Path) -> int:
    from trustedml.ml._lenet import accuracy_line, evaluate_saved_model

    correct, count = evaluate_saved_model(args.evaluate_only, str(data_dir))
    print(accuracy_line(correct, count), flush=True)
    return 0


def _train(args: argparse.Namespace, data_dir: Path) -> int:
    from trustedml.ml._configs import TrainConfig
    from trustedml.ml._launch import Entry
    from trustedml.ml._mnist import idx_path

    config = TrainConfig(
        data_dir=str(data_dir), train_limit=args.train_limit, **training_fields(args)
    )
    inputs = (idx_path(data_dir, s, k) for s in ("train", "test") for k in ("images", "labels"))
    entry = Entry("trustedml.ml._lenet", "train_lenet", "load_inputs", "trustedml.ml._mnist")
    return check_and_train("trustedml-lenet", entry, config, args, *inputs)


def _data_dir(args: argparse.Namespace) -> Path:
    return resolved_input("--data-path", args.data_path, default_dataset("mnist"))


def main(argv: list[str] | None = None) -> int:
    """Run the workload with command-line arguments ``argv``; returns the exit code."""
    mark_process_start("driver-jvm-start", parent=True)
    mark_process_start("driver-process-start")
    mark("driver-main")
    return run_workload(_parser().parse_args(argv), _data_dir, _evaluate, _train)


if __name__ == "__main__":
    sys.exit(main())
