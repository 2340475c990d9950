"""XGBoost classification of Pima Indians Diabetes on Spark (``xgboost.spark``).

Reads the header-less CSV (8 features, then the 0/1 outcome; plaintext or ``.tml``
encrypted with the job's keys), trains on a seeded, stratified 80/20 split with
``num_workers`` barrier tasks, prints ``rawPrediction | probability | prediction`` for
the held-out rows, ``accuracy: x.xxxx`` and ``AUC: x.xxxx``, and with ``--model-out``
saves the booster encrypted under ``--model-key-id``.

    trustedml example --keys K --kek models xgboost-classifier --model-out pima.json
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
    stratified_split,
    xgboost_params,
    xgboost_parser,
)

# The column names of the mlbench PimaIndiansDiabetes data set this copy comes from.
FEATURES = ("pregnant", "glucose", "pressure", "triceps", "insulin", "mass", "pedigree", "age")
OUTCOME = "diabetes"
SCHEMA = ", ".join(f"{name} DOUBLE" for name in (*FEATURES, OUTCOME))


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate and optionally save the classifier; the exit status."""
    parser = xgboost_parser(
        "xgboost-classifier",
        "XGBoost classifier on Pima Indians Diabetes",
        "pima-indians-diabetes.data.csv",
        # Chosen by 5-fold cross-validation on the training split, never on the held-out
        # rows: on 650 noisy rows, shallow trees with strong shrinkage generalise best.
        max_depth=3,
        n_estimators=100,
        learning_rate=0.05,
    )
    args = parse_checked(parser, argv)

    from pyspark.ml.evaluation import (
        BinaryClassificationEvaluator,
        MulticlassClassificationEvaluator,
    )
    from xgboost.spark import SparkXGBClassifier

    spark = spark_session("trustedml-xgboost-classifier")
    try:
        table = read_table(spark, args.file_path, "csv", header=False, schema=SCHEMA)
        train, test = stratified_split(table, OUTCOME, 0.2, args.seed)
        classifier = SparkXGBClassifier(**xgboost_params(args))
        model = classifier.fit(assemble(train, FEATURES, OUTCOME))
        # Scored once: the table and both metrics would each rerun the Python UDF.
        predictions = model.transform(assemble(test, FEATURES, OUTCOME)).cache()
        shown = [*FEATURES, "label", "rawPrediction", "probability", "prediction"]
        predictions.select(*shown).show(args.show)
        accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(predictions)
        auc = BinaryClassificationEvaluator(
            rawPredictionCol="probability", metricName="areaUnderROC"
        ).evaluate(predictions)
        print(f"accuracy: {accuracy:.4f}")
        print(f"AUC: {auc:.4f}")
        if args.model_out is not None:
            saved = save_booster(model, args.model_out, args.model_key_id)
            print(f"model saved encrypted (key {args.model_key_id}): {saved}")
    except TrustedMLError as exc:
        # Missing keys and bad paths caught on the driver are the user's to fix: say so plainly.
        print(f"xgboost-classifier: error: {exc}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
