"""Parquet Modular Encryption in Spark, for tests/data/test_pme.py.

pme_roundtrip.py IN_FILE OUT_DIR MARKER FOOTER_KEY COLUMN_KEY [UNREADABLE]
    read the encrypted IN_FILE, write an encrypted dataset to OUT_DIR (footer under
    FOOTER_KEY, column "name" under COLUMN_KEY), print both as RESULT=<json>; then,
    when given, read UNREADABLE, a file under a KEK this job lacks: the job fails
"""

import json
import sys

from pyspark.sql import SparkSession


def rows(df):
    return sorted([list(r) for r in df.orderBy("id").collect()])


spark = SparkSession.builder.getOrCreate()
in_file, out_dir, marker, footer_key, column_key = sys.argv[1:6]
result = {"read": rows(spark.read.parquet(in_file))}
written = spark.createDataFrame(
    [(i, f"{marker}-spark-{i}", i * 0.25) for i in range(20)],
    "id long, name string, score double",
)
(
    written.write.option("parquet.encryption.footer.key", footer_key)
    .option("parquet.encryption.column.keys", f"{column_key}:name")
    .parquet(out_dir)
)
result["written"] = rows(written)
result["reread"] = rows(spark.read.parquet(out_dir))
print("RESULT=" + json.dumps(result), flush=True)
if len(sys.argv) > 6:
    rows(spark.read.parquet(sys.argv[6]))  # fails: the job lacks its KEK
spark.stop()
