"""Trusted Spark standalone clusters: master and workers started inside a TEE backend."""

__all__: list[str] = []
