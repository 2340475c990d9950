"""The habits of a kept project: LICENSE, CHANGELOG, CONTRIBUTING, names a user knows."""

from __future__ import annotations

import hashlib
import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt, byte for byte.
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"

# The reference workloads are "the BigDL PPML reference examples" or "the examples";
# built from parts so this file does not match itself.
SEED = "se" + "ed"
WORKLOAD_AS_SEED = re.compile(
    rf"{SEED}'s|\b{SEED} (?:examples?|workloads?|project)\b", re.IGNORECASE
)


def _pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def test_license_is_the_apache_2_text_pyproject_declares() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    assert project["license"] == "Apache-2.0"
    # Hatchling ships LICEN[CS]E* by default; an explicit list must keep LICENSE in it.
    assert "LICENSE" in project.get("license-files", ["LICENSE"])
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_SHA256
    assert b"Version 2.0, January 2004" in text
    assert b"APPENDIX: How to apply the Apache License to your work." in text


def test_changelog_has_an_unreleased_section_and_every_milestone() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert headings[0] == "[Unreleased]"
    issues = [
        int(n)
        for n in re.findall(
            r"^Issue (\d+) - \d{4}-\d{2}-\d{2}: ", "\n".join(headings[1:]), re.MULTILINE
        )
    ]
    assert issues == sorted(issues, reverse=True)  # newest first
    assert {2, 3, 4, 5, 6, 7, 12} <= set(issues)
    for section in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        assert re.search(
            r"^### (Added|Changed|Deprecated|Removed|Fixed|Security)$", section, re.MULTILINE
        ), section[:60]


def test_contributing_covers_setup_tests_markers_benchmarks_and_layers() -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    for needed in ("make venv", "make test", "make demo", "--dist loadfile", "python -m bench"):
        assert needed in text
    assert "docs/architecture.md" in text
    assert "CHANGELOG.md" in text
    pytest_ini = _pyproject()["tool"]
    assert isinstance(pytest_ini, dict)
    markers = pytest_ini["pytest"]["ini_options"]["markers"]
    for marker in markers:
        name = marker.split(":", 1)[0]
        assert f"`{name}`" in text, f"marker {name} is not described"
    for target in re.findall(r"^make (\w+)", text, re.MULTILINE):
        assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), re.MULTILINE)


def test_no_tracked_file_calls_the_examples_a_seed() -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    offenders = []
    for name in filter(None, files):
        path = ROOT / name.decode()
        if not path.is_file():
            continue  # deleted in the working tree
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary: datasets, vectors
        offenders += [
            f"{name.decode()}:{n}: {line.strip()}"
            for n, line in enumerate(text.splitlines(), 1)
            if WORKLOAD_AS_SEED.search(line)
        ]
    assert offenders == []
