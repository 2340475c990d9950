"""The examples, run through the real command line in secure mode."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from tests.conftest import APPS, EXAMPLES, run_cli
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


@pytest.fixture(scope="module")
def spark_examples(session_keys: KeyDirectory, session_passphrase_file: Path) -> dict[str, str]:
    """pi, wordcount and sql_basic submitted in secure mode, in one driver (one JVM):
    what each printed, by name."""
    scripts = [
        [str(EXAMPLES / "pi.py"), "4"],
        [str(EXAMPLES / "wordcount.py"), str(EXAMPLES / "sql_basic.py")],
        [str(EXAMPLES / "sql_basic.py"), str(EXAMPLES / "resources")],
    ]
    secure = ["--keys", str(session_keys.path), "--passphrase-file", str(session_passphrase_file)]
    joined = [arg for script in scripts for arg in ("---", *script)][1:]
    result = run_cli(["submit", *secure, "--no-ui", str(APPS / "run_examples.py"), *joined])
    assert result.returncode == 0, result.stderr[-3000:]
    parts = re.split(r"^=== (\S+)\n", result.stdout, flags=re.MULTILINE)
    assert parts[0] == "", parts[0]
    printed = dict(zip(parts[1::2], parts[2::2], strict=True))
    assert list(printed) == ["pi.py", "wordcount.py", "sql_basic.py"]
    return printed


@pytest.mark.spark
def test_pi(spark_examples: dict[str, str]) -> None:
    match = re.fullmatch(r"Pi is roughly (\d\.\d+)\n", spark_examples["pi.py"])
    assert match, spark_examples["pi.py"]
    assert abs(float(match.group(1)) - math.pi) < 0.01


@pytest.mark.spark
def test_wordcount_on_a_python_file(spark_examples: dict[str, str]) -> None:
    source = EXAMPLES / "sql_basic.py"
    words = [w for line in source.read_text().splitlines() for w in line.split(" ") if w]
    lines = spark_examples["wordcount.py"].splitlines()
    counts = dict(line.rsplit(": ", 1) for line in lines)
    assert len(counts) == len(lines)
    assert int(counts["import"]) == words.count("import") > 0
    assert sum(int(c) for c in counts.values()) == len(words)


@pytest.mark.spark
def test_sql_basic(spark_examples: dict[str, str]) -> None:
    out = spark_examples["sql_basic.py"]
    assert "|  19| Justin|" in out  # df.show() of people.json
    assert "Name: Justin" in out  # teenagers, by schema inference
    assert "|  30|    1|" in out  # groupBy("age").count()


def test_wordcount_usage_error(secure: list[str]) -> None:
    result = run_cli(["run", *secure, "--", "python", str(EXAMPLES / "wordcount.py")])
    assert result.returncode == 2
    assert "usage: wordcount.py FILE" in result.stderr
