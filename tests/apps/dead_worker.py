"""Write encrypted output while one Python worker dies by SIGKILL mid-job.

usage: dead_worker.py OUTPUT_DIR KEY_ID
"""

import os
import signal
import sys

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from trustedml.runtime import job_keyring
from trustedml.spark import write_encrypted

out, key_id = sys.argv[1:3]
spark = SparkSession.builder.appName("dead-worker").getOrCreate()


@F.udf("string")
def render(n: int) -> str:
    if n == 33:  # in the last partition: the others may have written their files
        os.kill(os.getpid(), signal.SIGKILL)
    return f"row {n}"


df = spark.range(0, 40, numPartitions=4).select(render("id").alias("value"))
write_encrypted(df, out, "text", key_id, keystore=job_keyring())
print("unreachable: the job wrote everything")
