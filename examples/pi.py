"""Estimate pi by Monte Carlo sampling on Spark (Spark's classic example).

trustedml submit examples/pi.py [PARTITIONS]
"""

import sys
from operator import add
from random import Random

from pyspark.sql import SparkSession


def inside(seed_and_count: tuple[int, int]) -> int:
    seed, count = seed_and_count
    rng = Random(seed)
    hits = 0
    for _ in range(count):
        x = rng.random() * 2 - 1
        y = rng.random() * 2 - 1
        hits += x * x + y * y <= 1
    return hits


def main() -> None:
    partitions = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    per_partition = 500_000
    spark = SparkSession.builder.appName("PythonPi").getOrCreate()
    tasks = [(seed, per_partition) for seed in range(partitions)]
    hits = spark.sparkContext.parallelize(tasks, partitions).map(inside).reduce(add)
    print(f"Pi is roughly {4.0 * hits / (partitions * per_partition):f}")
    spark.stop()


if __name__ == "__main__":
    main()
