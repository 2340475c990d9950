"""Feature preparation of the NAB NYC taxi series in pandas-on-Spark (the origin's
Orca data example).

Reads ``timestamp,value`` (plaintext or ``.tml`` encrypted with the job's keys), adds
``datetime`` (the parsed timestamp), ``hours`` (hour of day) and ``awake`` (1 for hours
0 and 6-23, 0 for 1-5), keeps the busy half-hours (``value`` above the series' median),
prints ``head()`` and ``tail()`` before and after, and with ``--output`` writes the
result as CSV with a header, encrypted under ``--key-id``.

The origin's second table holds about half the rows only because it printed the first
of the two shards left by ``repartition(2)``: an arbitrary, run-dependent half. The
median filter is a deterministic stand-in of the same size with a meaning of its own.

    trustedml example --keys K --kek data nyc-taxi-prep --output busy-taxi
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from trustedml.ml._io import read_table
from trustedml.ml._options import add_input, add_output
from trustedml.ml._tabular import check_input, require_key, run_on_spark
from trustedml.runtime import job_keystore
from trustedml.spark import write_encrypted_pandas

if TYPE_CHECKING:
    import pyspark.pandas as ps
    from pyspark.sql import SparkSession

SCHEMA = "timestamp STRING, value BIGINT"
AWAKE_BEGIN, AWAKE_END = 6, 23
TIMESTAMP_FORMAT = "yyyy-MM-dd HH:mm:ss"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nyc-taxi-prep", description="pandas-on-Spark feature prep of NYC taxi demand"
    )
    add_input(
        parser,
        "--file-path",
        "nyc_taxi.csv",
        "CSV input with header timestamp,value; plaintext or encrypted (.tml)",
    )
    add_output(
        parser,
        "--output",
        "directory for the prepared rows: CSV with header, encrypted",
        ("--key-id", "data", "KEK that wraps the output"),
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output directory"
    )
    args = parser.parse_args(argv)
    check_input(parser, args.file_path)
    if args.output is not None:
        require_key(parser, "--key-id", args.key_id)
        if not args.overwrite and args.output.exists() and any(args.output.iterdir()):
            parser.error(f"--output {args.output}: exists and is not empty (add --overwrite)")
    return args


def add_features(psdf: ps.DataFrame[Any]) -> ps.DataFrame[Any]:
    """``psdf`` with ``datetime``, ``hours`` and ``awake`` added, as the origin's
    ``process_feature`` adds them."""
    # astype is a Spark cast; ps.to_datetime would run pandas in a UDF for the same result.
    psdf["datetime"] = psdf["timestamp"].astype("datetime64[ns]")
    psdf["hours"] = psdf["datetime"].dt.hour
    hours = psdf["hours"]
    psdf["awake"] = (((hours >= AWAKE_BEGIN) & (hours <= AWAKE_END)) | (hours == 0)).astype(int)
    return psdf


def show(title: str, psdf: ps.DataFrame[Any]) -> None:
    print(f"{title}: {len(psdf)} rows")
    print(psdf.head())
    print(psdf.tail())


def main(argv: list[str] | None = None) -> int:
    """Prepare, print and optionally write the series; the exit status."""
    args = parse_args(argv)

    import pyspark.pandas as ps
    from pyspark.sql import functions as F

    def body(spark: SparkSession) -> None:
        # The timestamps are wall-clock times with no zone. In UTC each exists exactly
        # once, so parsing and taking the hour cannot shift across a daylight-saving change.
        spark.conf.set("spark.sql.session.timeZone", "UTC")
        # A consecutive index in file order, so head() and tail() show the series' ends and
        # the kept rows number from 0: "distributed" leaves gaps, and "sequence" funnels
        # every row through one partition.
        ps.set_option("compute.default_index_type", "distributed-sequence")
        # Read (and for .tml decrypt) once: every head, tail and count below is a scan.
        table = read_table(spark, args.file_path, "csv", header=True, schema=SCHEMA).cache()
        data = table.pandas_api()
        show("data collected", data)

        median = table.agg(F.median("value")).collect()[0][0]
        prepared = add_features(data)
        busy = prepared[prepared["value"] > median].reset_index(drop=True)
        show(f"data2 collected (value > median {median:g})", busy)

        if args.output is not None:
            write_encrypted_pandas(
                busy,
                args.output,
                "csv",
                args.key_id,
                keystore=job_keystore(),
                mode="overwrite" if args.overwrite else "errorifexists",
                header=True,
                timestampFormat=TIMESTAMP_FORMAT,
            )
            print(f"output written encrypted (key {args.key_id}): {args.output}")

    return run_on_spark("nyc-taxi-prep", body)


if __name__ == "__main__":
    sys.exit(main())
