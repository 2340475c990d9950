"""Spark workers outlive the broker session the driver shares with them, then attest
themselves with the job's own evidence to get data keys.

usage: long_job.py KEY_ID SECONDS
"""

import os
import sys
import time

from pyspark.sql import SparkSession

from trustedml.runtime import job_keystore

key_id, wait = sys.argv[1], float(sys.argv[2])
spark = SparkSession.builder.appName("long-job").getOrCreate()
store = job_keystore()
shared = store.for_workers([key_id])  # the driver attests here


def work(_: object) -> list[tuple[int, bytes]]:
    time.sleep(wait)  # past the lifetime of the shared session's token
    return [(os.getpid(), shared.generate_data_key(key_id).wrapped)]


made = spark.sparkContext.parallelize(range(2), 2).mapPartitions(work).collect()
for _, wrapped in made:
    store.unwrap_data_key(key_id, wrapped)  # genuine keys of this broker
print("worker keys:", len(made))
spark.stop()
