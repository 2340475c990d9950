"""The security doctor's Spark properties checks: the parser agrees with Java's, a
deliberately weak configuration gives every rule, trusted-ml's own gives none."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import FAST_JVM, PASSPHRASE, ROOT, run_cli
from trustedml import KeyDirectory, Secret, SecureSparkConfig
from trustedml.cli import cli  # noqa: TID251  (a test of the CLI itself)
from trustedml.errors import SparkConfigError
from trustedml.spark import (
    LINT_RULES,
    DeployMode,
    Severity,
    lint_conf_files,
    lint_properties,
    parse_properties,
    properties_text,
    read_properties,
)

SECRET = "hunter2-literal-cluster-secret"
# Every weakness of a properties file, one or two per line.
WEAK_A = f"""\
# a spark-defaults.conf written to be weak
spark.master            spark://10.1.2.3:7077
spark.authenticate      true
spark.network.crypto.enabled : true
spark.authenticate.secret {SECRET}
spark.ssl.keyStorePassword=${{env:KS_PASSWORD}}
spark.driver.bindAddress=0.0.0.0
pytorch.spark.distributor.ignoreSsl=true
spark.trustedml.allowPlaintextCollectives \\
    true
"""
WEAK_B = f"""\
spark.authenticate=false
spark.authenticate.secret={SECRET}
spark.ssl.trustStorePassword = plain-truststore-password
"""
JAVA_READER = """\
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.util.*;

public class Props {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        FileInputStream file = new FileInputStream(args[0]);
        try (Reader in = new InputStreamReader(file, StandardCharsets.UTF_8)) {
            props.load(in);
        }
        PrintStream out = new PrintStream(System.out, true, "UTF-8");
        for (String key : new TreeSet<>(props.stringPropertyNames())) {
            // Spark trims each value (Utils.getPropertiesFromFile).
            out.print(key + "\\0" + props.getProperty(key).trim() + "\\0");
        }
    }
}
"""
TRICKY = (
    "# comment\n"
    "! also a comment\n"
    "   \n"
    "spaced   value with  inner  blanks   \n"
    "colon:value\n"
    "both = : x\n"
    "tabbed\t\tvalue\n"
    "esc\\=aped\\ key = v\\tw\\u0041\\\\z\n"
    "cont = first \\\n"
    "       second \\\n"
    "   # not a comment\n"
    "crlf = one\r\n"
    "cr = two\rlast = three\n"
    "unicode = h\u00e9llo\n"
    "repeat = 1\n"
    "repeat = 2\n"
    "empty\n"
    "odd\\\\\n"
    "dangling = end\\"
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


@pytest.mark.skipif(shutil.which("java") is None, reason="needs a Java runtime")
def test_parser_reads_properties_as_java_does(tmp_path: Path) -> None:
    path = _write(tmp_path, "tricky.conf", TRICKY)
    source = _write(tmp_path, "Props.java", JAVA_READER)
    java = subprocess.run(
        ["java", *FAST_JVM.split(), str(source), str(path)],
        capture_output=True,
        timeout=120,
        check=True,
    )
    fields = java.stdout.decode("utf-8").split("\0")[:-1]
    expected = dict(zip(fields[::2], fields[1::2], strict=True))
    ours = {p.key: p.value for p in read_properties(path)}
    assert ours == expected
    # The cases the file is there for, so a change of both sides cannot pass unseen.
    assert ours["spaced"] == "value with  inner  blanks"
    assert ours["both"] == ": x"
    assert ours["esc=aped key"] == "v\twA\\z"
    assert ours["cont"] == "first second # not a comment"
    assert (ours["crlf"], ours["cr"], ours["last"]) == ("one", "two", "three")
    assert (ours["repeat"], ours["empty"], ours["odd\\"], ours["dangling"]) == ("2", "", "", "end")
    lines = {p.key: p.line for p in read_properties(path)}
    assert (lines["spaced"], lines["cont"], lines["crlf"], lines["last"]) == (4, 9, 12, 14)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a = \\u12x4\n", r"bad.conf:1: malformed \uxxxx escape"),
        (b"ok=1\nb = \\u00\n", r"bad.conf:2: malformed \uxxxx escape"),
        (b"\x7fELF\x02\x01\x01\x00\x00", "expected a text properties file, got binary data"),
        (b"a = caf\xe9\n", "expected UTF-8 text, got an invalid byte at offset 7"),
    ],
)
def test_malformed_file_is_one_config_error(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "bad.conf"
    path.write_bytes(data)
    with pytest.raises(SparkConfigError, match=re.escape(expected)):
        lint_conf_files([path])


def test_weak_configuration_gives_every_rule_without_the_secret(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.conf", WEAK_A)
    b = _write(tmp_path, "b.conf", WEAK_B)
    findings = lint_conf_files([a, b])
    # Secrets in argv and hosts without the overlay are a running cluster's (tests/cluster).
    assert {f.id for f in findings} == set(LINT_RULES) - {"TML-C009", "TML-C015"}
    by = {(f.id, f.where) for f in findings}
    assert ("TML-C008", f"{a}:5") in by
    assert ("TML-C008", f"{b}:2") in by
    assert ("TML-C008", f"{b}:3") in by
    assert ("TML-C008", f"{a}:6") not in by  # a ${env:...} reference is no secret
    assert ("TML-C010", f"{a}:5, {b}:2") in by
    assert ("TML-C012", f"{a}:7") in by
    assert ("TML-C013", f"{a}:8") in by
    assert ("TML-C013", f"{a}:9") in by  # the continuation line's value counts
    assert ("TML-C002", str(a)) in by  # unset: Spark's default AES/CTR
    assert ("TML-C003", f"{b}:1") in by
    assert ("TML-C002", str(b)) not in by  # no crypto at all is TML-C001 there
    assert ("TML-C001", str(b) + ":1") in by
    for f in findings:
        assert f.severity is LINT_RULES[f.id].severity
        assert f.fix == LINT_RULES[f.id].fix
        assert SECRET not in repr(f)
        assert "plain-truststore-password" not in repr(f)
    order = [list(Severity).index(f.severity) for f in findings]
    assert order == sorted(order)


def test_rest_port_matters_only_off_local_mode() -> None:
    props = parse_properties("spark.master=local[2]\n", "x.conf")
    assert "TML-C005" not in {f.id for f in lint_properties(props, "x.conf")}
    props = parse_properties("spark.master.rest.enabled = TRUE\n", "x.conf")
    rest = [f for f in lint_properties(props, "x.conf") if f.id == "TML-C005"]
    assert [(f.where, f.severity) for f in rest] == [("x.conf:1", Severity.HIGH)]


def test_rpc_tls_replaces_network_crypto() -> None:
    text = "spark.authenticate=true\nspark.ssl.rpc.enabled=true\n"
    ids = {f.id for f in lint_properties(parse_properties(text), "x")}
    assert not ids & {"TML-C001", "TML-C002", "TML-C004", "TML-C014"}
    assert "TML-C003" not in ids


@pytest.mark.parametrize("mode", [DeployMode.STANDALONE, DeployMode.LOCAL])
def test_trusted_ml_configuration_has_no_finding(
    session_keys: KeyDirectory, tmp_path: Path, mode: DeployMode
) -> None:
    master = "spark://127.0.0.1:7077" if mode is DeployMode.STANDALONE else "local[2]"
    settings = SecureSparkConfig.from_key_directory(
        session_keys, Secret(PASSPHRASE), master=master, mode=mode
    )
    path = _write(tmp_path, "spark.properties", properties_text(settings.conf()))
    assert lint_conf_files([path]) == []


def test_cli_json_and_exit_codes(session_keys: KeyDirectory, tmp_path: Path) -> None:
    weak = _write(tmp_path, "weak.conf", WEAK_A)
    result = run_cli(["doctor", "--conf", str(weak), "--json"])
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert {f["id"] for f in doc["findings"]} >= {"TML-C002", "TML-C008", "TML-C013"}
    assert all(set(f) == {"id", "severity", "title", "where", "fix"} for f in doc["findings"])
    assert SECRET not in result.stdout + result.stderr
    # Only a medium finding: exit 0.
    secure = SecureSparkConfig.from_key_directory(
        session_keys, Secret(PASSPHRASE), master="spark://127.0.0.1:7077"
    ).conf()
    secure["spark.ssl.enabled"] = "false"
    only_medium = _write(tmp_path, "ui.conf", properties_text(secure))
    runner = CliRunner()
    result_ui = runner.invoke(cli, ["doctor", "--conf", str(only_medium), "--json"])
    assert result_ui.exit_code == 0, result_ui.output
    ui_doc = json.loads(result_ui.output)
    assert ui_doc["ok"] is True
    assert [f["id"] for f in ui_doc["findings"]] == ["TML-C011"]
    text = runner.invoke(cli, ["doctor", "--conf", str(only_medium)])
    assert text.exit_code == 0
    assert text.output.splitlines()[-1] == "1 finding(s): 0 high, 1 medium, 0 low"


@pytest.mark.parametrize(
    ("name", "data"),
    [("missing.conf", None), ("binary.conf", b"\x00\x01\x02"), ("esc.conf", b"k=\\uZZZZ\n")],
)
def test_cli_malformed_input_is_one_line_exit_2(
    tmp_path: Path, name: str, data: bytes | None
) -> None:
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    result = CliRunner().invoke(cli, ["doctor", "--conf", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert name in lines[0]
    assert "Traceback" not in result.output


def test_docs_list_every_rule() -> None:
    doc = (ROOT / "docs" / "doctor.md").read_text()
    for rule in LINT_RULES.values():
        assert f"| {rule.id} | {rule.severity} | {rule.summary} | {rule.fix} |" in doc, rule.id
