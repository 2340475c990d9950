"""Read an encrypted CSV with the job's keys, aggregate, write the result encrypted.

usage: encrypted_job.py ENCRYPTED_CSV OUTPUT_DIR KEY_ID
"""

import sys

from pyspark.sql import SparkSession

from trustedml.runtime import job_keyring
from trustedml.spark import read_encrypted, write_encrypted

src, out, key_id = sys.argv[1:4]
spark = SparkSession.builder.appName("encrypted-job").getOrCreate()
ring = job_keyring()
df = read_encrypted(spark, src, "csv", keystore=ring, header=True, inferSchema=True)
daily = df.selectExpr("substr(timestamp, 1, 10) AS day", "value").groupBy("day").sum("value")
write_encrypted(daily.coalesce(1), out, "csv", key_id, keystore=ring, header=True)
print("rows:", df.count(), "days:", daily.count())
spark.stop()
