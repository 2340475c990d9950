"""Benchmarks for trusted-ml: run with ``python -m bench NAME``."""
