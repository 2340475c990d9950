"""`trustedml doctor --broker` against a real broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.broker.conftest import Broker
from trustedml._doctor import Status, diagnose


def test_doctor_reaches_a_running_broker_and_checks_its_certificate(
    broker: Broker, tmp_path: Path
) -> None:
    def broker_check(**options: Any) -> tuple[Status, str]:
        checks = diagnose(tsm_root=tmp_path, broker_url=broker.url, **options)
        (check,) = [c for c in checks if c.area == "broker"]
        return check.status, check.detail

    status, detail = broker_check(broker_ca=broker.ca)
    assert status is Status.OK, detail
    assert detail.startswith("healthy over TLS")
    # The CA of the broker's key directory is the default.
    assert broker_check(keys=broker.keys.path)[0] is Status.OK
    # Not trusted by the system's store: a certificate failure, named.
    status, detail = broker_check()
    assert status is Status.FAIL
    assert "CERTIFICATE_VERIFY_FAILED" in detail
