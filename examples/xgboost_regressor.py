"""XGBoost regression of Boston Housing prices on Spark; prints RMSE on held-out rows.

trustedml submit --keys K --kek models --kek data examples/xgboost_regressor.py \
    --file-path datasets/boston_housing.csv --model-out boston.json
"""

import sys

from trustedml.ml.workloads.xgboost_regressor import main

if __name__ == "__main__":
    sys.exit(main())
