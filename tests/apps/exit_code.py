import sys

from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
assert spark.range(10).count() == 10
spark.stop()
sys.exit(int(sys.argv[1]))
