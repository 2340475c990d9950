"""A Spark job that moves encrypted data through the JVM's tml file system only, for
tests/spark/test_jvm_secrets.py to look for its keys in everything it exposes.

usage: jvm_keys_probe.py READY GO TRIPS_DIR ZONES_DIR OUT_DIR OUT_KEY_ID

Reads the encrypted CSV directory TRIPS_DIR (columns zone,fare) and the encrypted
Parquet directory ZONES_DIR (zone,borough) with engine="jvm", joins them, labels the
boroughs in a Python UDF (so the job has Python workers), and writes the fares per
borough encrypted under OUT_KEY_ID, as CSV to OUT_DIR/csv and as Parquet to
OUT_DIR/parquet, again with engine="jvm"; then reads the Parquet back the same way.
Prints the read's physical plan, ROWS=<json>, CONF=<json: the SparkConf's pairs> and
HADOOP=<json: the session's Hadoop entries trustedml.* and fs.tml.*>; then writes READY
and waits (at most 300 s) for GO, so that the test can read the live processes and
spark.local.dir before Spark stops.
"""

import argparse
import json
import time
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

TRIPS = "zone INT, fare DOUBLE"


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("ready", "go", "trips", "zones", "out"):
        parser.add_argument(name, type=Path)
    parser.add_argument("key_id")
    args = parser.parse_args()

    from trustedml.runtime import job_keyring
    from trustedml.spark import read_encrypted, write_encrypted

    spark = SparkSession.builder.getOrCreate()
    ring = job_keyring()
    # engine="jvm": a job that fell back to the Python data source fails here instead.
    trips = read_encrypted(
        spark, args.trips, "csv", keystore=ring, engine="jvm", header=True, schema=TRIPS
    )
    zones = read_encrypted(spark, args.zones, "parquet", keystore=ring, engine="jvm")
    label = F.udf(lambda borough: f"borough {borough}", "string")
    fares = (
        trips.join(zones, "zone")
        .groupBy("borough")
        .agg(F.sum("fare").alias("fares"), F.count("*").alias("trips"))
        .withColumn("label", label("borough"))
        .coalesce(1)
    )
    fares.explain()
    write_encrypted(
        fares, args.out / "csv", "csv", args.key_id, keystore=ring, engine="jvm", header=True
    )
    write_encrypted(
        fares, args.out / "parquet", "parquet", args.key_id, keystore=ring, engine="jvm"
    )
    back = read_encrypted(spark, args.out / "parquet", "parquet", keystore=ring, engine="jvm")
    rows = sorted((r["borough"], r["fares"], r["trips"], r["label"]) for r in back.collect())
    print("ROWS=" + json.dumps(rows), flush=True)

    print("CONF=" + json.dumps(sorted(spark.sparkContext.getConf().getAll())), flush=True)
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
    entries = dict(hadoop.getValByRegex(r"^(trustedml|fs\.tml)\."))
    print("HADOOP=" + json.dumps(entries, sort_keys=True), flush=True)

    args.ready.write_text("ready")
    deadline = time.monotonic() + 300
    while not args.go.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    spark.stop()


if __name__ == "__main__":
    main()
