"""Shuffle rows holding a marker, then copy spark.local.dir before Spark deletes it.

usage: shuffle_marker.py MARKER COPY_DIR
"""

import shutil
import sys

from pyspark.sql import SparkSession

marker, copy_dir = sys.argv[1], sys.argv[2]
spark = SparkSession.builder.appName("shuffle-marker").getOrCreate()
sc = spark.sparkContext
rows = sc.parallelize([(i % 7, f"{marker}-{i}") for i in range(20_000)], 4)
grouped = rows.groupByKey(3).mapValues(len).collect()
print("groups:", sorted(grouped))
local_dir = sc.getConf().get("spark.local.dir")
shutil.copytree(local_dir, copy_dir, dirs_exist_ok=True)
spark.stop()
