"""The examples, run through the real command line in secure mode."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, run_cli
from trustedml import KeyDirectory


@pytest.fixture
def secure(session_keys: KeyDirectory, session_passphrase_file: Path) -> list[str]:
    return ["--keys", str(session_keys.path), "--passphrase-file", str(session_passphrase_file)]


def test_helloworld(secure: list[str]) -> None:
    result = run_cli(["run", *secure, "--", "python", str(EXAMPLES / "helloworld.py")])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello World\n"


def test_numpy(secure: list[str]) -> None:
    result = run_cli(["run", *secure, "--", "python", str(EXAMPLES / "test_numpy.py")])
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"numpy\.dot: \d+\.\d+ sec\n", result.stdout)


@pytest.mark.spark
def test_pi(secure: list[str]) -> None:
    result = run_cli(["submit", *secure, "--no-ui", str(EXAMPLES / "pi.py"), "4"])
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"^Pi is roughly (\d\.\d+)$", result.stdout, re.MULTILINE)
    assert match, result.stdout
    assert abs(float(match.group(1)) - math.pi) < 0.01


@pytest.mark.spark
def test_wordcount_on_a_python_file(secure: list[str]) -> None:
    source = EXAMPLES / "sql_basic.py"
    words = [w for line in source.read_text().splitlines() for w in line.split(" ") if w]
    result = run_cli(["submit", *secure, "--no-ui", str(EXAMPLES / "wordcount.py"), str(source)])
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(line.rsplit(": ", 1) for line in result.stdout.splitlines())
    assert int(counts["import"]) == words.count("import") > 0
    assert sum(int(c) for c in counts.values()) == len(words)


@pytest.mark.spark
def test_sql_basic(secure: list[str]) -> None:
    resources = EXAMPLES / "resources"
    result = run_cli(["submit", *secure, "--no-ui", str(EXAMPLES / "sql_basic.py"), str(resources)])
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "|  19| Justin|" in out  # df.show() of people.json
    assert "Name: Justin" in out  # teenagers, by schema inference
    assert "|  30|    1|" in out  # groupBy("age").count()


def test_wordcount_usage_error(secure: list[str]) -> None:
    result = run_cli(["run", *secure, "--", "python", str(EXAMPLES / "wordcount.py")])
    assert result.returncode == 2
    assert "usage: wordcount.py FILE" in result.stderr
