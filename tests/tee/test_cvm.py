from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tee.conftest import PYTHON, measure_script, write_app
from trustedml import LaunchError, PlainSparkConfig, run
from trustedml.attestation._providers import ConfigfsTsmProvider
from trustedml.tee import CvmBackend, Job, LaunchPlan, job_evidence_provider


class FakeTsm(ConfigfsTsmProvider):
    """configfs-tsm with the kernel played in a plain directory: mkdir populates the
    attributes, a write to inblob bumps generation and yields a fake report."""

    def __init__(self, root: Path, provider: str = "tdx_guest") -> None:
        super().__init__(root)
        self.kernel_provider = provider

    def _create_entry(self, entry: Path) -> None:
        super()._create_entry(entry)
        (entry / "generation").write_text("0\n")
        (entry / "provider").write_text(self.kernel_provider + "\n")
        (entry / "inblob").write_bytes(b"")
        (entry / "outblob").write_bytes(b"")

    def _remove_entry(self, entry: Path) -> None:
        for child in entry.iterdir():
            child.unlink()
        super()._remove_entry(entry)

    def _write_attribute(self, entry: Path, name: str, data: bytes) -> None:
        super()._write_attribute(entry, name, data)
        generation = int((entry / "generation").read_text()) + 1
        (entry / "generation").write_text(f"{generation}\n")
        (entry / "outblob").write_bytes(b"REPORT:" + data)


@pytest.mark.parametrize(("kernel", "kind"), [("tdx_guest", "tdx-dcap"), ("sev_guest", "sev-snp")])
def test_cvm_runs_natively_with_launch_evidence_from_configfs_tsm(
    tmp_path: Path, plain: PlainSparkConfig, kernel: str, kind: str
) -> None:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    app, out = write_app(tmp_path / "job.py"), tmp_path / "out.json"
    plans: list[LaunchPlan] = []
    backend = CvmBackend(root, provider=FakeTsm(root, kernel))
    code = run(["python", str(app), str(out)], settings=plain, tee=backend, on_plan=plans.append)
    assert code == 0
    measurement = measure_script(app, [str(out)], plain)
    assert json.loads(out.read_text()) == {
        "TRUSTEDML_TEE": "cvm",
        "TRUSTEDML_JOB_MEASUREMENT": measurement.hex,
        "TRUSTEDML_TSM_ROOT": str(root),
    }
    (plan,) = plans
    # The kernel saw the job measurement as report_data (zero-padded to 64 bytes).
    assert plan.evidence == b"REPORT:" + measurement.digest + bytes(16)
    assert plan.banner is None
    assert f"cvm: {kind} launch evidence" in plan.notes[1]
    assert list(root.iterdir()) == []  # the report entry is gone


def test_cvm_checks_trusted_files_before_starting(tmp_path: Path, plain: PlainSparkConfig) -> None:
    root = tmp_path / "report"
    root.mkdir()
    app, out = write_app(tmp_path / "job.py"), tmp_path / "out.json"

    class Tampering(CvmBackend):
        def prepare(self, job: Job) -> LaunchPlan:
            plan = super().prepare(job)
            app.write_text("# changed\n")
            return plan

    with pytest.raises(LaunchError, match=r"trusted file app:job\.py .* changed since"):
        run(
            [PYTHON, str(app), str(out)],
            settings=plain,
            tee=Tampering(root, provider=FakeTsm(root)),
        )
    assert not out.exists()


def test_cvm_refuses_without_a_confidential_vm(tmp_path: Path, plain: PlainSparkConfig) -> None:
    app, out = write_app(tmp_path / "job.py"), tmp_path / "out.json"
    with pytest.raises(LaunchError, match="--tee cvm: no confidential-VM attestation here"):
        run([PYTHON, str(app), str(out)], settings=plain, tee=CvmBackend(tmp_path / "absent"))
    root = tmp_path / "report"
    root.mkdir()
    with pytest.raises(LaunchError, match="expected one of sev_guest, tdx_guest"):
        run(
            [PYTHON, str(app), str(out)],
            settings=plain,
            tee=CvmBackend(root, provider=FakeTsm(root, "arm_cca_guest")),
        )
    assert not out.exists()


def test_the_job_gets_configfs_tsm_at_the_launchers_root(tmp_path: Path) -> None:
    provider = job_evidence_provider({"TRUSTEDML_TEE": "cvm", "TRUSTEDML_TSM_ROOT": str(tmp_path)})
    assert isinstance(provider, ConfigfsTsmProvider)
    assert provider.root == tmp_path
    default = job_evidence_provider({"TRUSTEDML_TEE": "cvm"})
    assert isinstance(default, ConfigfsTsmProvider)
    assert default.root == Path("/sys/kernel/config/tsm/report")


def test_cvm_default_root() -> None:
    assert CvmBackend().tsm_root == Path("/sys/kernel/config/tsm/report")
    assert repr(CvmBackend()) == "CvmBackend(tsm_root='/sys/kernel/config/tsm/report')"
