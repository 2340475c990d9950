"""Attest to the key broker, read an encrypted CSV, write the daily sums encrypted.

usage: attested_job.py ENCRYPTED_CSV OUTPUT_DIR KEY_ID
"""

import sys

from pyspark.sql import SparkSession

from trustedml.errors import TrustedMLError
from trustedml.runtime import job_keystore
from trustedml.spark import read_encrypted, write_encrypted

src, out, key_id = sys.argv[1:4]
spark = SparkSession.builder.appName("attested-job").getOrCreate()
try:
    keys = job_keystore()
    df = read_encrypted(spark, src, "csv", keystore=keys, header=True, inferSchema=True)
    daily = df.selectExpr("substr(timestamp, 1, 10) AS day", "value").groupBy("day").sum("value")
    write_encrypted(daily.coalesce(1), out, "csv", key_id, keystore=keys, header=True)
    print("rows:", df.count(), "days:", daily.count())
except TrustedMLError as exc:
    print(f"attested-job: error: {exc}", file=sys.stderr)
    sys.exit(1)
finally:
    spark.stop()
