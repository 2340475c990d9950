"""A shuffle-heavy Spark job over a flights Parquet table (bench/flights.py), timed
from inside the driver.

    spark-submit bench/apps/shuffle_job.py DATA.parquet

Prints BENCH_SECONDS=<job seconds> and BENCH_CHECK=<checksum of the results>.
"""

import sys
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

# Enough buckets that the self-join output stays near the input size (about 4M rows
# for 3M inputs) while still being a many-to-many join on a derived key.
SELF_JOIN_BUCKETS = 1 << 22


def airport_join(flights: DataFrame) -> tuple[int, int, int]:
    by_origin = flights.groupBy("origin").agg(
        F.count("*").alias("departures"),
        F.avg("delay").alias("avg_departure_delay"),
        F.sum("distance").alias("departure_distance"),
    )
    by_dest = flights.groupBy("destination").agg(
        F.count("*").alias("arrivals"),
        F.avg("delay").alias("avg_arrival_delay"),
        F.sum("distance").alias("arrival_distance"),
    )
    joined = by_origin.join(by_dest, by_origin["origin"] == by_dest["destination"])
    # Integer sums only: float averages may differ in the last bits between runs.
    row = joined.agg(
        F.count("*").alias("airports"),
        F.sum("departures").alias("departures"),
        F.sum(F.col("departure_distance") + F.col("arrival_distance")).alias("distance"),
    ).first()
    assert row is not None
    return int(row["airports"]), int(row["departures"]), int(row["distance"])


def route_counts(flights: DataFrame) -> tuple[int, int]:
    routes = flights.repartition(16, "origin").groupBy("origin", "destination").count()
    row = routes.agg(F.count("*").alias("routes"), F.max("count").alias("busiest")).first()
    assert row is not None
    return int(row["routes"]), int(row["busiest"])


def bucketed_self_join(flights: DataFrame) -> tuple[int, int]:
    keyed = flights.withColumn(
        "bucket",
        F.pmod(F.xxhash64("date", "origin", "destination", "delay"), F.lit(SELF_JOIN_BUCKETS)),
    )
    left = keyed.select("bucket", "distance")
    right = keyed.select("bucket", F.col("delay").alias("other_delay"))
    row = (
        left.join(right, "bucket")
        .agg(F.count("*").alias("pairs"), F.sum("other_delay").alias("delay"))
        .first()
    )
    assert row is not None
    return int(row["pairs"]), int(row["delay"])


def main() -> int:
    data = sys.argv[1]
    spark = SparkSession.builder.appName("trustedml-bench-shuffle").getOrCreate()
    # A broadcast would skip the shuffle this job exists to measure.
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
    # On two cores the default 200 partitions measure task scheduling more than the
    # shuffle bytes that encryption touches.
    spark.conf.set("spark.sql.shuffle.partitions", "16")
    start = time.perf_counter()
    flights = spark.read.parquet(data)
    parts = (*airport_join(flights), *route_counts(flights), *bucketed_self_join(flights))
    seconds = time.perf_counter() - start
    spark.stop()
    print(f"BENCH_SECONDS={seconds:.6f}")
    print("BENCH_CHECK=" + ":".join(str(p) for p in parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
