"""The basics of Spark SQL over the three-person sample data (Spark's example).

    trustedml submit examples/sql_basic.py [RESOURCES_DIR]

RESOURCES_DIR holds people.json and people.txt (default: examples/resources).
"""

import sys
from pathlib import Path

from pyspark.sql import Row, SparkSession
from pyspark.sql.types import StringType, StructField, StructType


def basic_df(spark: SparkSession, resources: Path) -> None:
    df = spark.read.json(str(resources / "people.json"))
    df.show()
    df.printSchema()
    df.select("name").show()
    df.select(df["name"], df["age"] + 1).show()
    df.filter(df["age"] > 21).show()
    df.groupBy("age").count().orderBy("age").show()
    df.createOrReplaceTempView("people")
    spark.sql("SELECT * FROM people").show()
    df.createOrReplaceGlobalTempView("people")
    spark.sql("SELECT * FROM global_temp.people").show()


def schema_inference(spark: SparkSession, resources: Path) -> None:
    lines = spark.sparkContext.textFile(str(resources / "people.txt"))
    parts = lines.map(lambda line: line.split(","))
    people = parts.map(lambda p: Row(name=p[0], age=int(p[1])))
    spark.createDataFrame(people).createOrReplaceTempView("people")
    teenagers = spark.sql("SELECT name FROM people WHERE age >= 13 AND age <= 19")
    for name in teenagers.rdd.map(lambda p: "Name: " + p.name).collect():
        print(name)


def programmatic_schema(spark: SparkSession, resources: Path) -> None:
    lines = spark.sparkContext.textFile(str(resources / "people.txt"))
    people = lines.map(lambda line: line.split(",")).map(lambda p: (p[0], p[1].strip()))
    schema = StructType(
        [StructField("name", StringType(), True), StructField("age", StringType(), True)]
    )
    spark.createDataFrame(people, schema).createOrReplaceTempView("people")
    spark.sql("SELECT name FROM people").show()


def main() -> None:
    default = Path(__file__).resolve().parent / "resources"
    resources = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    spark = SparkSession.builder.appName("Python Spark SQL basic example").getOrCreate()
    basic_df(spark, resources)
    schema_inference(spark, resources)
    programmatic_schema(spark, resources)
    spark.stop()


if __name__ == "__main__":
    main()
