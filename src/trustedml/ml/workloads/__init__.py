"""The ML workloads as spark-submit applications (`trustedml example`, `trustedml ml`)."""
