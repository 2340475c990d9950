"""pandas-on-Spark feature prep of the NYC taxi series; writes the busy half-hours encrypted.

trustedml submit --keys K --kek models --kek data examples/nyc_taxi_prep.py \
    --file-path datasets/nyc_taxi.csv --output busy-taxi
"""

import sys

from trustedml.ml.workloads.nyc_taxi_prep import main

if __name__ == "__main__":
    sys.exit(main())
