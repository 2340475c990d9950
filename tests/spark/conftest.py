from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import PASSPHRASE
from trustedml import KeyDirectory, Secret, SecureSparkConfig
from trustedml.spark import start_session


@pytest.fixture(scope="session")
def spark(session_keys: KeyDirectory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One in-process Spark session in secure mode for the whole test run."""
    settings = SecureSparkConfig.from_key_directory(
        session_keys,
        Secret(PASSPHRASE),
        master="local[2]",
        ui=False,
        local_dir=tmp_path_factory.mktemp("spark-scratch"),
        extra={
            "spark.sql.shuffle.partitions": "4",
            "spark.sql.warehouse.dir": str(tmp_path_factory.mktemp("warehouse")),
        },
    )
    session = start_session(settings, "trustedml-tests")
    yield session
    session.stop()
