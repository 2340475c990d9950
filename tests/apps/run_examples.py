"""Run several example scripts one after another in this one Spark driver, so that
one launch (one JVM) serves several tests.

usage: run_examples.py SCRIPT [ARG ...] [--- SCRIPT [ARG ...] ...]

Each script runs as __main__ with its own argv, after a line "=== NAME" on stdout.
Each stops its SparkSession; the next one's getOrCreate() starts a new one in the
same JVM, with the same configuration.
"""

import runpy
import sys
from pathlib import Path


def main() -> None:
    scripts: list[list[str]] = [[]]
    for arg in sys.argv[1:]:
        if arg == "---":
            scripts.append([])
        else:
            scripts[-1].append(arg)
    for script, *args in scripts:
        print(f"=== {Path(script).name}", flush=True)
        sys.argv = [script, *args]
        runpy.run_path(script, run_name="__main__")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
