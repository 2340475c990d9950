"""A Spark driver that answers TPC-H queries one at a time, on command, for bench/cluster.py.

    spark-submit bench/apps/tpch_job.py DATA_DIR QUERIES.json OUT_DIR COMMANDS_FIFO

Registers each DATA_DIR/<table>.parquet as a view and reads it once (untimed), writes
OUT_DIR/ready, then reads query numbers from the FIFO, one per line: for each it times
``spark.sql(text).collect()`` and writes OUT_DIR/q<N>-<K>.json (K counts the runs of N)
with the seconds and the normalised rows. ``quit`` ends it. Two such drivers, one per
cluster, can then take turns query by query.
"""

import json
import os
import sys
import time
from pathlib import Path

from pyspark.sql import SparkSession

# bench._tpch (the shared row normalisation) lives two directories up.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench._tpch import TABLES, normalize_row


def _write(path: Path, payload: dict[str, object]) -> None:
    # Written then renamed: the benchmark polls for the name and must not read half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, path)


def main(data: Path, queries_file: Path, out: Path, commands: Path) -> None:
    texts = {int(n): q for n, q in json.loads(queries_file.read_text(encoding="utf-8")).items()}
    spark = SparkSession.builder.appName("tpch").getOrCreate()
    for table in TABLES:
        frame = spark.read.parquet(str(data / f"{table}.parquet"))
        frame.createOrReplaceTempView(table)
        frame.count()
    _write(out / "ready", {"tables": list(TABLES)})
    runs: dict[int, int] = {}
    with commands.open(encoding="utf-8") as fifo:
        for line in fifo:
            word = line.strip()
            if word == "quit":
                break
            number = int(word)
            runs[number] = runs.get(number, 0) + 1
            start = time.perf_counter()
            rows = spark.sql(texts[number]).collect()
            seconds = time.perf_counter() - start
            _write(
                out / f"q{number}-{runs[number]}.json",
                {"query": number, "seconds": seconds, "rows": [normalize_row(r) for r in rows]},
            )
    spark.stop()


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:5]))
