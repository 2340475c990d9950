"""On a standalone cluster: wait for the executors, read an encrypted CSV in several
partitions through the key broker (with the Python data source, then with the tml file
system's key agents), write it back encrypted, and say which workers read it.

usage: cluster_keys.py ENCRYPTED_CSV OUTPUT_DIR KEY_ID EXECUTORS
"""

import os
import sys
import time

from pyspark.sql import SparkSession

from trustedml.runtime import job_keystore
from trustedml.spark import read_encrypted, write_encrypted

src, out, key_id, executors = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
spark = SparkSession.builder.appName("cluster-keys").getOrCreate()
# What `trustedml submit` told the runtime; without it, the runtime reads the master of
# the active context (as for an in-process session), which the rest of the job uses.
print("launcher master:", os.environ.pop("TRUSTEDML_SPARK_MASTER", None))
try:
    # Every executor registered before the first stage: each then runs tasks (the
    # block managers include the driver's).
    deadline = time.monotonic() + 60
    while spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() < executors + 1:
        if time.monotonic() > deadline:
            sys.exit(f"cluster-keys: fewer than {executors} executors after 60 s")
        time.sleep(0.2)
    keys = job_keystore()
    df = read_encrypted(spark, src, "csv", keystore=keys, header=True, splitBytes=65536)
    # Which worker's executor decrypted each partition, and how many rows it held.
    read = df.rdd.mapPartitions(
        lambda rows: [(os.environ.get("TRUSTEDML_WORKER", "?"), sum(1 for _ in rows))]
    ).collect()
    # The same file through the tml file system (the write below takes it too): each
    # executor JVM's key agent attests with its worker's evidence for the data keys.
    spark.conf.set("spark.sql.files.maxPartitionBytes", "65536")
    jvm = read_encrypted(spark, src, "csv", keystore=keys, header=True, engine="jvm")
    jvm_read = jvm.rdd.mapPartitions(
        lambda rows: [(os.environ.get("TRUSTEDML_WORKER", "?"), sum(1 for _ in rows))]
    ).collect()
    write_encrypted(df, out, "csv", key_id, keystore=keys, header=True)
    print("rows:", sum(n for _, n in read), "partitions:", len(read))
    print("workers:", ",".join(sorted({w for w, _ in read})))
    print("jvm rows:", sum(n for _, n in jvm_read), "partitions:", len(jvm_read))
    print("jvm workers:", ",".join(sorted({w for w, n in jvm_read if n})))
finally:
    spark.stop()
