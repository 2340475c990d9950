"""Use a module shipped with --py-files on the executors, then exit with argv[1]."""

import sys

import shipped_helper
from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
total = spark.sparkContext.parallelize(range(10), 2).map(shipped_helper.triple).sum()
print("tripled sum:", total)
spark.stop()
sys.exit(int(sys.argv[1]))
