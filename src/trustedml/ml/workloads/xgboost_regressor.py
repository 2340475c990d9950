"""XGBoost regression of Boston Housing prices on Spark (``xgboost.spark``).

Reads the CSV (13 features, then the target MEDV; plaintext or ``.tml`` encrypted with
the job's keys), trains on a seeded 80/20 split with ``num_workers`` barrier tasks,
prints ``features | label | prediction`` for the held-out rows and ``RMSE: x.xxxx``,
and with ``--model-out`` saves the booster encrypted under ``--model-key-id``.

    trustedml example --keys K --kek models xgboost-regressor --model-out boston.json
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from trustedml.ml._io import read_table
from trustedml.ml._tabular import (
    Tuning,
    fit_and_score,
    run_on_spark,
    save_if_asked,
    xgboost_args,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

PROG = "xgboost-regressor"
# Chosen by 5-fold cross-validation on the training split, never on the held-out rows:
# shallow trees with shrinkage suit 400 training rows.
TUNED = Tuning(max_depth=3, n_estimators=200, learning_rate=0.1)


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate and optionally save the regressor; the exit status."""
    about = "XGBoost regressor on Boston Housing"
    args = xgboost_args(argv, PROG, about, "boston_housing.csv", TUNED)

    from pyspark.ml.evaluation import RegressionEvaluator
    from xgboost.spark import SparkXGBRegressor

    def body(spark: SparkSession) -> None:
        table = read_table(spark, args.file_path, "csv", header=True, inferSchema=True)
        *feature_cols, label_col = table.columns
        split = table.randomSplit([0.8, 0.2], seed=args.seed)
        model, predictions = fit_and_score(SparkXGBRegressor, args, split, feature_cols, label_col)
        predictions.select("features", "label", "prediction").show(args.show)
        rmse = RegressionEvaluator(metricName="rmse").evaluate(predictions)
        print(f"RMSE: {rmse:.4f}")
        save_if_asked(model, args)

    return run_on_spark(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
