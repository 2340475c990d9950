"""trustedml.doctor: what this machine can run, checked against real tools and trees."""

from __future__ import annotations

import json
import shutil
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.conftest import cli_env, run_cli
from trustedml import KeyDirectory
from trustedml._doctor import Check, Status, diagnose


def _by_name(checks: list[Check], area: str) -> dict[str, Check]:
    return {c.name: c for c in checks if c.area == area}


def _diagnose(tmp_path: Path, **options: Any) -> list[Check]:
    """diagnose() on a machine with no SGX device and no configfs-tsm."""
    return diagnose(sgx_devices=[tmp_path / "no-sgx"], tsm_root=tmp_path / "no-tsm", **options)


def test_this_machine_runs_spark_jobs(tmp_path: Path) -> None:
    checks = _diagnose(tmp_path)
    runtime = _by_name(checks, "runtime")
    assert runtime["python"].status is Status.OK
    assert sys.executable in runtime["python"].detail
    assert runtime["java"].status is Status.OK
    assert _by_name(checks, "extras")["pyspark"].detail.startswith("4.")
    assert not [c for c in checks if c.status is Status.FAIL]


def test_missing_or_old_java_fails_with_what_to_do(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    none = _diagnose(tmp_path, env={"PATH": str(empty)})
    java = _by_name(none, "runtime")["java"]
    assert java.status is Status.FAIL
    assert "Spark needs Java 17 or later" in java.detail

    home = tmp_path / "jdk11"
    (home / "bin").mkdir(parents=True)
    fake = home / "bin" / "java"
    fake.write_text(
        "#!/bin/sh\n"
        "echo '    java.runtime.version = 11.0.2+9' >&2\n"
        "echo '    java.specification.version = 11' >&2\n"
    )
    fake.chmod(0o755)
    old = _diagnose(tmp_path, env={"JAVA_HOME": str(home), "PATH": str(empty)})
    java = _by_name(old, "runtime")["java"]
    assert java.status is Status.FAIL
    assert java.detail == f"expected Java 17+, got 11.0.2+9 at {fake}"


def test_key_directory_checks(tmp_path: Path, session_keys: KeyDirectory) -> None:
    good = _by_name(_diagnose(tmp_path, keys=session_keys.path), "keys")
    assert good["directory"].status is Status.OK
    assert good["tls certificate"].status is Status.OK
    assert "permissions" not in good

    not_after = datetime.fromisoformat(session_keys.manifest.tls_not_after)
    soon = _diagnose(tmp_path, keys=session_keys.path, now=lambda: not_after - timedelta(days=10))
    assert _by_name(soon, "keys")["tls certificate"].status is Status.WARN
    late = _diagnose(tmp_path, keys=session_keys.path, now=lambda: not_after + timedelta(days=1))
    assert _by_name(late, "keys")["tls certificate"].detail.startswith("expired")

    opened = tmp_path / "opened"
    shutil.copytree(session_keys.path, opened)
    opened.chmod(0o755)
    loose = _by_name(_diagnose(tmp_path, keys=opened), "keys")
    assert loose["permissions"].status is Status.FAIL
    assert "expected 0700, got 0755" in loose["permissions"].detail

    (missing,) = [c for c in _diagnose(tmp_path, keys=tmp_path) if c.area == "keys"]
    assert missing.status is Status.FAIL
    assert "is not a key directory" in missing.detail


def test_tee_backends_follow_what_the_machine_has(tmp_path: Path) -> None:
    bare = _by_name(_diagnose(tmp_path, env={"PATH": "/nonexistent"}), "tee")
    assert bare["none"].status is Status.OK
    assert "NO hardware protection" in bare["sim"].detail
    assert bare["gramine"].status is Status.WARN
    assert "gramine-sgx, gramine-sgx-sign, an SGX device" in bare["gramine"].detail
    assert bare["cvm"].status is Status.WARN

    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("gramine-sgx", "gramine-sgx-sign"):
        (tools / name).write_text("#!/bin/sh\n")
        (tools / name).chmod(0o755)
    device = tmp_path / "sgx_enclave"
    device.touch()
    tsm = tmp_path / "tsm" / "report"
    tsm.mkdir(parents=True)
    ready = diagnose(
        env={"PATH": str(tools)}, sgx_devices=[tmp_path / "absent", device], tsm_root=tsm
    )
    tee = _by_name(ready, "tee")
    assert tee["gramine"].status is Status.OK
    assert str(device) in tee["gramine"].detail
    assert tee["cvm"].status is Status.OK


def test_broker_unreachable_fails(tmp_path: Path) -> None:
    (check,) = [
        c for c in _diagnose(tmp_path, broker_url="https://127.0.0.1:1") if c.area == "broker"
    ]
    assert check.status is Status.FAIL
    assert "cannot be reached: ConnectError" in check.detail
    (plain,) = [
        c for c in _diagnose(tmp_path, broker_url="http://127.0.0.1:1") if c.area == "broker"
    ]
    assert plain.detail == "expected an https:// URL"


def test_cli(tmp_path: Path, session_keys: KeyDirectory) -> None:
    ok = run_cli(["doctor", "--json", "--keys", str(session_keys.path)])
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["ok"] is True
    areas = {(c["area"], c["name"]): c["status"] for c in doc["checks"]}
    assert areas[("keys", "directory")] == "ok"
    assert areas[("tee", "sim")] == "ok"

    table = run_cli(["doctor"])
    assert table.returncode == 0, table.stderr
    assert "NO hardware" in table.stdout

    bad = run_cli(["doctor", "--keys", str(tmp_path)], env=cli_env(COLUMNS="200"))
    assert bad.returncode == 1
    assert "is not a key directory" in bad.stdout
