"""XGBoost regression of Boston Housing prices on Spark (``xgboost.spark``).

Reads the CSV (13 features, then the target MEDV; plaintext or ``.tml`` encrypted with
the job's keys), trains on a seeded 80/20 split with ``num_workers`` barrier tasks,
prints ``features | label | prediction`` for the held-out rows and ``RMSE: x.xxxx``,
and with ``--model-out`` saves the booster encrypted under ``--model-key-id``.

    trustedml example --keys K --kek models xgboost-regressor --model-out boston.json
"""

from __future__ import annotations

import sys

from trustedml.errors import TrustedMLError
from trustedml.ml._io import read_table
from trustedml.ml._tabular import (
    assemble,
    parse_checked,
    save_booster,
    spark_session,
    xgboost_params,
    xgboost_parser,
)


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate and optionally save the regressor; the exit status."""
    parser = xgboost_parser(
        "xgboost-regressor",
        "XGBoost regressor on Boston Housing",
        "boston_housing.csv",
        # Chosen by 5-fold cross-validation on the training split, never on the held-out
        # rows: shallow trees with shrinkage suit 400 training rows.
        max_depth=3,
        n_estimators=200,
        learning_rate=0.1,
    )
    args = parse_checked(parser, argv)

    from pyspark.ml.evaluation import RegressionEvaluator
    from xgboost.spark import SparkXGBRegressor

    spark = spark_session("trustedml-xgboost-regressor")
    try:
        table = read_table(spark, args.file_path, "csv", header=True, inferSchema=True)
        *feature_cols, label_col = table.columns
        train, test = table.randomSplit([0.8, 0.2], seed=args.seed)
        regressor = SparkXGBRegressor(**xgboost_params(args))
        model = regressor.fit(assemble(train, feature_cols, label_col))
        # Scored once: the table and the metric would each rerun the Python UDF.
        predictions = model.transform(assemble(test, feature_cols, label_col)).cache()
        predictions.select("features", "label", "prediction").show(args.show)
        rmse = RegressionEvaluator(metricName="rmse").evaluate(predictions)
        print(f"RMSE: {rmse:.4f}")
        if args.model_out is not None:
            saved = save_booster(model, args.model_out, args.model_key_id)
            print(f"model saved encrypted (key {args.model_key_id}): {saved}")
    except TrustedMLError as exc:
        # Missing keys and bad paths caught on the driver are the user's to fix: say so plainly.
        print(f"xgboost-regressor: error: {exc}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
