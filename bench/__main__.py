"""Run one benchmark: ``python -m bench NAME [options]``; no NAME lists them."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# A new benchmark is a module bench/NAME.py with ``main(argv) -> int`` plus one line here.
BENCHMARKS: dict[str, str] = {
    "ml": "the examples' ML workloads at full size, secure vs plain",
    "spark_overhead": "secure vs plain Spark on a shuffle-heavy job over 3M flights",
    "encrypted_io": "file encryption vs raw AES-GCM; Spark over encrypted vs plaintext files",
    "broker": "key broker latency (challenge+attest+unwrap, unwrap) and unwraps per second",
    "attestation": "verify time of every SGX, TDX, SEV-SNP and sim evidence vector",
    "cluster": "TPC-H on a secure vs a plain 2-host standalone cluster; LeNet cluster vs local",
    "tpch": "TPC-H (22 queries, SF1, local[2]) over .tml-encrypted vs plain Parquet",
}


def _usage() -> str:
    width = max(len(name) for name in BENCHMARKS)
    lines = ["usage: python -m bench NAME [options]", "", "benchmarks:"]
    lines += [f"  {name:<{width}}  {about}" for name, about in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    entry: Callable[[list[str]], int] = importlib.import_module(f"bench.{name}").main
    return entry(rest)


if __name__ == "__main__":
    sys.exit(main())
