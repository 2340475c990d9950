"""Run a job, report the effective security settings, then wait so the test can
inspect the live process tree.

usage: leak_probe.py READY_FILE GO_FILE
"""

import json
import sys
import time
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql.functions import col, udf

ready, go = Path(sys.argv[1]), Path(sys.argv[2])
spark = SparkSession.builder.appName("leak-probe").getOrCreate()
sc = spark.sparkContext

df = spark.range(0, 50_000).withColumn("k", col("id") % 13)
plus_one = udf(lambda x: x + 1, "long")  # a Python worker, fed over a Unix socket
total = df.select(plus_one("id").alias("v"), "k").groupBy("k").sum("v").agg({"sum(v)": "sum"})
print("total:", total.collect()[0][0])

keys = [
    "spark.authenticate",
    "spark.network.crypto.enabled",
    "spark.network.crypto.cipher",
    "spark.network.crypto.authEngineVersion",
    "spark.io.encryption.enabled",
    "spark.ssl.enabled",
    "spark.python.unix.domain.socket.enabled",
]
report = {k: sc.getConf().get(k, None) for k in keys}
report["ui"] = sc.uiWebUrl
print("EFFECTIVE=" + json.dumps(report), flush=True)
ready.write_text("ready")

deadline = time.monotonic() + 120
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.2)
spark.stop()
