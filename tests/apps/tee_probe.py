"""Reports where it runs: TEE, job measurement, and evidence from its TEE.

trustedml submit --tee sim tests/apps/tee_probe.py OUT.json [EVIDENCE_FILE]
"""

import json
import sys

from pyspark.sql import SparkSession

from trustedml.tee import job_evidence_provider, job_measurement, job_tee


def main() -> None:
    out = sys.argv[1]
    spark = SparkSession.builder.appName("tee-probe").getOrCreate()
    count = spark.sparkContext.parallelize(range(10), 2).count()
    spark.stop()
    measurement = job_measurement()
    report = {
        "tee": job_tee(),
        "measurement": measurement.hex() if measurement else None,
        "count": count,
    }
    if len(sys.argv) > 2:
        evidence = job_evidence_provider().get_evidence(b"probe-nonce")
        with open(sys.argv[2], "wb") as fh:
            fh.write(evidence)
    with open(out, "w") as fh:
        json.dump(report, fh)


if __name__ == "__main__":
    main()
