"""What a TEE backend and the job measurement need from a job's Spark settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

__all__ = ["JobSettings"]


class JobSettings(Protocol):
    """The Spark settings of a job, as plain mappings (a
    :class:`trustedml.spark.SparkSettings` is one)."""

    def conf(self) -> Mapping[str, str]:
        """Non-secret Spark properties."""
        ...

    def environment(self) -> Mapping[str, str]:
        """Variables for the job's process, secrets included."""
        ...

    def insecure_conf(self) -> Mapping[str, str]:
        """Properties let through with --allow-insecure-conf (measured when present)."""
        ...

    def measured_conf(self) -> Mapping[str, str]:
        """The properties that enter the job measurement."""
        ...
