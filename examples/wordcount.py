"""Count words in a text file on Spark (Spark's classic example).

trustedml submit examples/wordcount.py FILE
"""

import sys
from operator import add

from pyspark.sql import SparkSession


def main() -> None:
    if len(sys.argv) != 2:
        print("usage: wordcount.py FILE", file=sys.stderr)
        sys.exit(2)
    spark = SparkSession.builder.appName("PythonWordCount").getOrCreate()
    lines = spark.read.text(sys.argv[1]).rdd.map(lambda row: row[0])
    counts = (
        lines.flatMap(lambda line: line.split(" "))
        .filter(lambda word: word != "")
        .map(lambda word: (word, 1))
        .reduceByKey(add)
        .sortBy(lambda pair: (-pair[1], pair[0]))
    )
    for word, count in counts.collect():
        print(f"{word}: {count}")
    spark.stop()


if __name__ == "__main__":
    main()
