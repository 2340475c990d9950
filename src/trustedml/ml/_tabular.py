"""What the tabular workloads (XGBoost on Spark, pandas-on-Spark prep) share: default
dataset paths, deterministic splits, and encrypted booster output."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from trustedml.errors import ConfigError, TrustedMLError
from trustedml.ml._collectives import checked_placement
from trustedml.ml._datasets import missing_default
from trustedml.ml._io import check_key, save_model
from trustedml.ml._options import add_input, add_output
from trustedml.runtime import job_keystore

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

SEED = 42


class Tuning(NamedTuple):
    """An XGBoost workload's defaults for ``--max-depth``, ``--n-estimators`` and
    ``--learning-rate``."""

    max_depth: int
    n_estimators: int
    learning_rate: float


def spark_session(app_name: str) -> SparkSession:
    """The job's session (``trustedml submit`` configures everything else)."""
    from pyspark.sql import SparkSession

    return SparkSession.builder.appName(app_name).getOrCreate()


def run_on_spark(prog: str, body: Callable[[SparkSession], None]) -> int:
    """Run ``body`` with the session ``trustedml-<prog>`` and stop it after; the exit
    status, with a trusted-ml error as one line ``<prog>: error: ...`` and 1."""
    spark = spark_session(f"trustedml-{prog}")
    try:
        body(spark)
    except TrustedMLError as exc:
        # Missing keys and bad paths caught on the driver are the user's to fix: say so plainly.
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    return 0


def xgboost_parser(
    prog: str,
    description: str,
    dataset: str,
    *,
    max_depth: int,
    n_estimators: int,
    learning_rate: float,
) -> argparse.ArgumentParser:
    """The options both XGBoost workloads take, with the defaults each was tuned with."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    what = "CSV, plaintext or .tml encrypted with the job's keys"
    add_input(parser, "--file-path", dataset, what)
    parser.add_argument("--num-workers", type=_positive_int, default=2)
    parser.add_argument("--max-depth", type=_positive_int, default=max_depth)
    parser.add_argument("--n-estimators", type=_positive_int, default=n_estimators)
    parser.add_argument("--learning-rate", type=float, default=learning_rate)
    parser.add_argument("--seed", type=int, default=SEED)
    add_output(
        parser,
        "--model-out",
        "save the booster (XGBoost JSON) here, encrypted; .tml is appended",
        ("--model-key-id", "models", "KEK that wraps the model"),
    )
    parser.add_argument("--show", type=int, default=20, help="prediction rows to print")
    return parser


def require_key(parser: argparse.ArgumentParser, option: str, key_id: str) -> None:
    """Stop before any Spark work when the job cannot encrypt its output under KEK
    ``key_id``: a usage error when ``--kek`` did not give it, a runtime error (exit 1)
    when the key broker refuses this job (it attests now, not after the training)."""
    try:
        job_keystore()
    except TrustedMLError as exc:
        parser.error(f"{option}: {exc}")
    try:
        check_key(key_id)
    except ConfigError as exc:
        parser.error(f"{option} {key_id!r}: {exc}")
    except TrustedMLError as exc:
        parser.exit(1, f"{parser.prog}: error: {option} {key_id!r}: {exc}\n")


def check_input(parser: argparse.ArgumentParser, path: Path) -> None:
    """Stop with a usage error when ``--file-path`` does not exist, saying so plainly when
    it is the parser's default that is absent."""
    message = missing_default("--file-path", path, parser.get_default("file_path"))
    if message is not None:
        parser.error(message)
    if not path.exists():
        parser.error(f"--file-path {path}: no such file or directory")


def parse_checked(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse an XGBoost workload's arguments; stop with a usage error, before Spark
    starts, on a missing input or a model that could not be encrypted."""
    args = parser.parse_args(argv)
    check_input(parser, args.file_path)
    if args.model_out is not None:
        require_key(parser, "--model-key-id", args.model_key_id)
    return args


def xgboost_args(
    argv: list[str] | None, prog: str, description: str, dataset: str, tuned: Tuning
) -> argparse.Namespace:
    """An XGBoost workload's checked arguments (:func:`xgboost_parser`, then
    :func:`parse_checked`)."""
    parser = xgboost_parser(prog, description, dataset, **tuned._asdict())
    return parse_checked(parser, argv)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def stratified_split(
    df: DataFrame, label_col: str, test_fraction: float, seed: int
) -> tuple[DataFrame, DataFrame]:
    """Split ``df`` into (train, test) class by class with ``randomSplit``, so both keep
    the class balance of ``df``."""
    from functools import reduce

    from pyspark.sql import functions as F

    label = F.col(f"`{label_col}`")
    values = sorted(
        row[0] for row in df.where(label.isNotNull()).select(label).distinct().collect()
    )
    parts = [
        df.where(label == value).randomSplit([1 - test_fraction, test_fraction], seed=seed)
        for value in values
    ]
    train = reduce(lambda a, b: a.unionByName(b), (p[0] for p in parts))
    test = reduce(lambda a, b: a.unionByName(b), (p[1] for p in parts))
    return train, test


def assemble(df: DataFrame, feature_cols: Sequence[str], label_col: str) -> DataFrame:
    """``features`` (a vector of ``feature_cols``) and a double ``label``, plus the inputs."""
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import functions as F

    labelled = df.withColumn("label", F.col(f"`{label_col}`").cast("double"))
    assembler = VectorAssembler(inputCols=list(feature_cols), outputCol="features")
    return assembler.transform(labelled)


def save_booster(model: Any, path: str | os.PathLike[str], key_id: str) -> Path:
    """Save the booster of a fitted ``xgboost.spark`` model as XGBoost JSON, encrypted."""
    raw = model.get_booster().save_raw("json")
    return save_model(bytes(raw), path, key_id)


def fit_and_score(
    estimator: Callable[..., Any],
    args: argparse.Namespace,
    split: Sequence[DataFrame],
    feature_cols: Sequence[str],
    label_col: str,
) -> tuple[Any, DataFrame]:
    """Fit ``estimator`` (an ``xgboost.spark`` class) with the workload's settings on the
    first of ``split`` (train, test); the model and its predictions for test, cached."""
    train, test = split
    if args.num_workers > 1:
        checked_placement(train.sparkSession, f"XGBoost with {args.num_workers} workers")
    model = estimator(**xgboost_params(args)).fit(assemble(train, feature_cols, label_col))
    # Scored once: the table and each metric would otherwise rerun the Python UDF.
    return model, model.transform(assemble(test, feature_cols, label_col)).cache()


def save_if_asked(model: Any, args: argparse.Namespace) -> None:
    """With ``--model-out``, save the booster encrypted under ``--model-key-id`` and say where."""
    if args.model_out is not None:
        saved = save_booster(model, args.model_out, args.model_key_id)
        print(f"model saved encrypted (key {args.model_key_id}): {saved}")


def xgboost_params(args: argparse.Namespace) -> dict[str, Any]:
    """The estimator settings both XGBoost workloads share."""
    return {
        "features_col": "features",
        "label_col": "label",
        "num_workers": args.num_workers,
        # xgboost.spark shuffles only when the partition count differs from
        # num_workers, and its barrier stage refuses a lineage with a union in it
        # (as a stratified split has): always shuffle into num_workers partitions.
        "force_repartition": True,
        "max_depth": args.max_depth,
        "n_estimators": args.n_estimators,
        "learning_rate": args.learning_rate,
        "random_state": args.seed,
        # Per-round training metrics on stdout would drown the table and the metrics.
        "verbose": False,
    }
