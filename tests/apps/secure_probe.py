"""One Spark job holding the parts tests/spark/test_submit.py checks, so that one
launch (one JVM) serves several tests.

usage: secure_probe.py READY GO [--udf] [--shuffle MARKER COPY_DIR] [--helper]
           [--encrypted SRC OUT KEY_ID] [--dead-worker OUT KEY_ID] [--exit N]

Prints the effective settings as EFFECTIVE=<json> after the parts asked for; then
writes READY and waits (at most 120 s) for GO, so that the test can inspect the live
process tree and the UI.
  --udf          a Python UDF (a Python worker fed over a Unix socket) over a shuffle
  --shuffle      shuffle rows holding MARKER, copy spark.local.dir to COPY_DIR at once
                 (Spark deletes it on stop)
  --helper       use shipped_helper, sent with --py-files, on the executors
  --encrypted    read an encrypted CSV with the job's keys, write the daily sums encrypted
  --dead-worker  write encrypted output while one Python worker dies by SIGKILL; the
                 failure is printed and the job goes on
  --exit         exit with status N after Spark stops
"""

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

SETTINGS = [
    "spark.app.name",
    "spark.sql.shuffle.partitions",
    "spark.eventLog.compress",
    "spark.authenticate",
    "spark.network.crypto.enabled",
    "spark.network.crypto.cipher",
    "spark.network.crypto.authEngineVersion",
    "spark.io.encryption.enabled",
    "spark.ssl.enabled",
    "spark.ui.enabled",
    "spark.python.unix.domain.socket.enabled",
]


def udf_over_a_shuffle(spark: SparkSession) -> None:
    df = spark.range(0, 50_000).withColumn("k", F.col("id") % 13)
    plus_one = F.udf(lambda x: x + 1, "long")
    total = df.select(plus_one("id").alias("v"), "k").groupBy("k").sum("v").agg({"sum(v)": "sum"})
    print("total:", total.collect()[0][0])


def shuffle_marker(spark: SparkSession, marker: str, copy_dir: str) -> None:
    sc = spark.sparkContext
    rows = sc.parallelize([(i % 7, f"{marker}-{i}") for i in range(20_000)], 4)
    print("groups:", sorted(rows.groupByKey(3).mapValues(len).collect()))
    shutil.copytree(sc.getConf().get("spark.local.dir"), copy_dir, dirs_exist_ok=True)


def use_shipped_helper(spark: SparkSession) -> None:
    import shipped_helper

    total = spark.sparkContext.parallelize(range(10), 2).map(shipped_helper.triple).sum()
    print("tripled sum:", total)


def encrypted_daily_sums(spark: SparkSession, src: str, out: str, key_id: str) -> None:
    from trustedml.runtime import job_keyring
    from trustedml.spark import read_encrypted, write_encrypted

    ring = job_keyring()
    df = read_encrypted(spark, src, "csv", keystore=ring, header=True, inferSchema=True)
    daily = df.selectExpr("substr(timestamp, 1, 10) AS day", "value").groupBy("day").sum("value")
    write_encrypted(daily.coalesce(1), out, "csv", key_id, keystore=ring, header=True)
    print("rows:", df.count(), "days:", daily.count())


def _render_or_die(n: int) -> str:
    if n == 33:  # in the last partition: the others may have written their files
        os.kill(os.getpid(), signal.SIGKILL)
    return f"row {n}"


def dead_worker(spark: SparkSession, out: str, key_id: str) -> None:
    from trustedml.runtime import job_keyring
    from trustedml.spark import write_encrypted

    render = F.udf(_render_or_die, "string")
    df = spark.range(0, 40, numPartitions=4).select(render("id").alias("value"))
    try:
        write_encrypted(df, out, "text", key_id, keystore=job_keyring())
    except Exception as exc:  # the job must fail; what it said is checked by the test
        print(f"dead-worker: the write failed: {exc}", flush=True)
    else:
        print("unreachable: the job wrote everything")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ready", type=Path)
    parser.add_argument("go", type=Path)
    parser.add_argument("--udf", action="store_true")
    parser.add_argument("--shuffle", nargs=2, metavar=("MARKER", "COPY_DIR"))
    parser.add_argument("--helper", action="store_true")
    parser.add_argument("--encrypted", nargs=3, metavar=("SRC", "OUT", "KEY_ID"))
    parser.add_argument("--dead-worker", nargs=2, metavar=("OUT", "KEY_ID"))
    parser.add_argument("--exit", type=int, default=0)
    args = parser.parse_args()

    spark = SparkSession.builder.getOrCreate()  # no appName: --conf spark.app.name wins
    if args.udf:
        udf_over_a_shuffle(spark)
    if args.shuffle:
        shuffle_marker(spark, *args.shuffle)
    if args.helper:
        use_shipped_helper(spark)
    if args.encrypted:
        encrypted_daily_sums(spark, *args.encrypted)
    if args.dead_worker:
        dead_worker(spark, *args.dead_worker)

    conf = spark.sparkContext.getConf()
    report = {k: conf.get(k, None) for k in SETTINGS}
    report["ui"] = spark.sparkContext.uiWebUrl
    print("EFFECTIVE=" + json.dumps(report), flush=True)
    args.ready.write_text("ready")
    deadline = time.monotonic() + 120
    while not args.go.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    spark.stop()
    sys.exit(args.exit)


if __name__ == "__main__":
    main()
