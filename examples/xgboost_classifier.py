"""XGBoost classification of Pima Indians Diabetes on Spark; prints accuracy and AUC.

trustedml submit --keys K --kek models --kek data examples/xgboost_classifier.py \
    --file-path datasets/pima-indians-diabetes.data.csv --model-out pima.json
"""

import sys

from trustedml.ml.workloads.xgboost_classifier import main

if __name__ == "__main__":
    sys.exit(main())
