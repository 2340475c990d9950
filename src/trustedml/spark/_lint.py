"""The security doctor's rules and its checks of Spark properties files: each weakness
is a :class:`Finding` with a stable id, a severity and the fix."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from trustedml.spark._properties import SparkProperty, read_properties

# Spark 4.3's defaults for the keys the rules read (from its config definitions).
_DEFAULTS = {
    "spark.authenticate": "false",
    "spark.network.crypto.enabled": "false",
    "spark.network.crypto.cipher": "AES/CTR/NoPadding",
    "spark.network.crypto.authEngineVersion": "1",
    "spark.network.crypto.saslFallback": "true",
    "spark.ssl.rpc.enabled": "false",
    "spark.master.rest.enabled": "true",
    "spark.io.encryption.enabled": "false",
    "spark.python.unix.domain.socket.enabled": "false",
    "spark.ssl.enabled": "false",
    "spark.ui.enabled": "true",
}
_GCM = "AES/GCM/NoPadding"
# Key names whose values are secrets (a "...file" key holds a path to one, not one).
SECRET_KEY = re.compile(r"(?i)secret|password|passphrase")
_ENV_REFERENCE = re.compile(r"\$\{env:[A-Za-z_][A-Za-z0-9_]*\}")
# Looked for, never bound.
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", "[::]", "0:0:0:0:0:0:0:0", "*"})  # noqa: S104
_ADDRESS_KEY = re.compile(r"(?i)(bindAddress|\.host|SPARK_LOCAL_IP)$")
IGNORE_SSL = "pytorch.spark.distributor.ignoreSsl"
ALLOW_PLAINTEXT_COLLECTIVES = "spark.trustedml.allowPlaintextCollectives"


class Severity(StrEnum):
    """How bad a finding is; any ``high`` one makes `trustedml doctor` exit 1."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass(frozen=True)
class LintRule:
    """One weakness the doctor looks for: its stable ``id``, severity and fix."""

    id: str
    severity: Severity
    summary: str
    fix: str


@dataclass(frozen=True)
class Finding:
    """One weakness found: the rule's ``id``, ``severity`` and ``fix``, what was found
    (``title``, never a secret value) and where (``file:line``, a file or a daemon)."""

    id: str
    severity: Severity
    title: str
    where: str
    fix: str


_RULES = (
    LintRule(
        "TML-C001",
        Severity.HIGH,
        "RPC traffic not encrypted",
        "set spark.authenticate=true and spark.network.crypto.enabled=true "
        f"(cipher {_GCM}), or spark.ssl.rpc.enabled=true",
    ),
    LintRule(
        "TML-C002",
        Severity.HIGH,
        "RPC encrypted with AES/CTR (unauthenticated; CVE-2025-55039)",
        f"set spark.network.crypto.cipher={_GCM} on every daemon and application",
    ),
    LintRule(
        "TML-C003",
        Severity.HIGH,
        "authentication off",
        "set spark.authenticate=true with a per-cluster secret from the environment "
        "(trustedml cluster does both)",
    ),
    LintRule(
        "TML-C004",
        Severity.MEDIUM,
        "SASL fallback on",
        "set spark.network.crypto.saslFallback=false",
    ),
    LintRule(
        "TML-C005",
        Severity.HIGH,
        "REST submission port open (it accepts unauthenticated jobs)",
        "set spark.master.rest.enabled=false on the master",
    ),
    LintRule(
        "TML-C006",
        Severity.HIGH,
        "I/O encryption off (shuffle and spill files in plaintext)",
        "set spark.io.encryption.enabled=true and spark.io.encryption.keySizeBits=256",
    ),
    LintRule(
        "TML-C007",
        Severity.HIGH,
        "Python workers over TCP (rows cross loopback in plaintext)",
        "set spark.python.unix.domain.socket.enabled=true",
    ),
    LintRule(
        "TML-C008",
        Severity.HIGH,
        "secret in a plain properties file",
        "remove the value; pass secrets in the environment (_SPARK_AUTH_SECRET, or a "
        "${env:NAME} reference); trustedml cluster and submit do so",
    ),
    LintRule(
        "TML-C009",
        Severity.HIGH,
        "secret in a process's arguments (readable by every local user)",
        "pass secrets in the environment, not as --conf or -D options",
    ),
    LintRule(
        "TML-C010",
        Severity.HIGH,
        "one secret shared by several clusters",
        "give each cluster its own secret (trustedml cluster derives one per master URL)",
    ),
    LintRule(
        "TML-C011",
        Severity.MEDIUM,
        "web UI without TLS",
        "set spark.ssl.enabled=true with a keystore (or spark.ui.enabled=false)",
    ),
    LintRule(
        "TML-C012",
        Severity.MEDIUM,
        "listening on every interface (0.0.0.0 or [::])",
        "bind to the host's own address: spark.driver.bindAddress and SPARK_LOCAL_IP",
    ),
    LintRule(
        "TML-C013",
        Severity.HIGH,
        "training collectives may cross hosts without encryption",
        "start the cluster with --overlay CIDR and drop "
        f"{ALLOW_PLAINTEXT_COLLECTIVES} / {IGNORE_SSL}",
    ),
    LintRule(
        "TML-C014",
        Severity.MEDIUM,
        "RPC authentication engine v1",
        "set spark.network.crypto.authEngineVersion=2",
    ),
    LintRule(
        "TML-C015",
        Severity.MEDIUM,
        "hosts joined without the overlay (trusted-ml's training refuses to cross them; "
        "other applications' collectives would cross in plaintext)",
        "start the cluster with --overlay CIDR",
    ),
)
LINT_RULES: Mapping[str, LintRule] = MappingProxyType({rule.id: rule for rule in _RULES})
_RANK = {Severity.HIGH: 0, Severity.MEDIUM: 1, Severity.LOW: 2}


def lint_finding(rule_id: str, title: str, where: str) -> Finding:
    """A finding of rule ``rule_id``: ``title`` says what was found, ``where`` where."""
    rule = LINT_RULES[rule_id]
    return Finding(rule.id, rule.severity, f"{rule.summary}: {title}", where, rule.fix)


def ordered_findings(findings: Iterable[Finding]) -> list[Finding]:
    """``findings`` without repeats, the most severe first, then by id and place."""
    return sorted(set(findings), key=lambda f: (_RANK[f.severity], f.id, f.where))


def is_literal_secret(key: str, value: str) -> bool:
    """Whether ``key=value`` puts a secret's value in plain text: a secret-looking key
    whose value is neither empty nor one ``${env:NAME}`` reference."""
    if not SECRET_KEY.search(key) or key.lower().endswith("file"):
        return False
    return bool(value.strip()) and not _ENV_REFERENCE.fullmatch(value.strip())


def secret_digest(value: str) -> str:
    """A short digest for telling two secret values apart without keeping them."""
    return hashlib.sha256(b"trusted-ml doctor\0" + value.encode()).hexdigest()[:16]


class _Conf:
    """The effective properties of one file (the last of a repeated key wins)."""

    def __init__(self, props: Sequence[SparkProperty], source: str) -> None:
        self.props = props
        self.source = source
        self.last = {p.key: p for p in props}

    def value(self, key: str) -> str:
        prop = self.last.get(key)
        return prop.value if prop is not None else _DEFAULTS.get(key, "")

    def on(self, key: str) -> bool:
        # Spark's boolean parser: "true"/"false", any case.
        return self.value(key).strip().lower() == "true"

    def shown(self, key: str) -> str:
        """``key=value`` as set, or that it is unset and Spark's default."""
        prop = self.last.get(key)
        if prop is None:
            return f"{key} not set (Spark's default: {_DEFAULTS.get(key, 'none')})"
        return f"{key}={prop.value}"

    def where(self, *keys: str) -> str:
        """``file:line`` of the first of ``keys`` that is set, else the file."""
        for key in keys:
            if key in self.last:
                return f"{self.source}:{self.last[key].line}"
        return self.source


def _rpc(conf: _Conf) -> list[Finding]:
    out = []
    auth = conf.on("spark.authenticate")
    if not auth:
        out.append(
            lint_finding(
                "TML-C003", conf.shown("spark.authenticate"), conf.where("spark.authenticate")
            )
        )
    tls = conf.on("spark.ssl.rpc.enabled")
    crypto = auth and conf.on("spark.network.crypto.enabled")
    if not (tls or crypto):
        keys = ("spark.network.crypto.enabled", "spark.ssl.rpc.enabled")
        shown = conf.shown("spark.authenticate") if not auth else conf.shown(keys[0])
        out.append(lint_finding("TML-C001", shown, conf.where(*keys, "spark.authenticate")))
    if crypto and not tls:
        key = "spark.network.crypto.cipher"
        if conf.value(key).strip().upper() != _GCM.upper():
            out.append(lint_finding("TML-C002", conf.shown(key), conf.where(key)))
        key = "spark.network.crypto.authEngineVersion"
        if conf.value(key).strip() != "2":
            out.append(lint_finding("TML-C014", conf.shown(key), conf.where(key)))
        key = "spark.network.crypto.saslFallback"
        if conf.on(key):
            out.append(lint_finding("TML-C004", conf.shown(key), conf.where(key)))
    return out


def _switches(conf: _Conf) -> list[Finding]:
    out = []
    key = "spark.master.rest.enabled"
    if conf.on(key) and not conf.value("spark.master").startswith("local"):
        out.append(lint_finding("TML-C005", conf.shown(key), conf.where(key)))
    for rule_id, key in (
        ("TML-C006", "spark.io.encryption.enabled"),
        ("TML-C007", "spark.python.unix.domain.socket.enabled"),
    ):
        if not conf.on(key):
            out.append(lint_finding(rule_id, conf.shown(key), conf.where(key)))
    ui_key = "spark.ssl.ui.enabled" if "spark.ssl.ui.enabled" in conf.last else "spark.ssl.enabled"
    if conf.on("spark.ui.enabled") and not conf.on(ui_key):
        out.append(lint_finding("TML-C011", conf.shown(ui_key), conf.where(ui_key)))
    for key in (IGNORE_SSL, ALLOW_PLAINTEXT_COLLECTIVES):
        if conf.on(key):
            out.append(lint_finding("TML-C013", conf.shown(key), conf.where(key)))
    return out


def _every_property(conf: _Conf) -> list[Finding]:
    out = []
    for prop in conf.props:
        where = f"{conf.source}:{prop.line}"
        if is_literal_secret(prop.key, prop.value):
            out.append(lint_finding("TML-C008", f"a literal value of {prop.key}", where))
        if _ADDRESS_KEY.search(prop.key) and prop.value.strip() in WILDCARD_ADDRESSES:
            out.append(lint_finding("TML-C012", f"{prop.key}={prop.value.strip()}", where))
    return out


def lint_properties(props: Sequence[SparkProperty], source: str) -> list[Finding]:
    """The findings of one configuration (``props`` of a file named ``source``)."""
    conf = _Conf(props, source)
    return ordered_findings(_rpc(conf) + _switches(conf) + _every_property(conf))


def shared_secret_findings(places: Mapping[str, Sequence[str]], what: str) -> list[Finding]:
    """TML-C010 for each secret (by digest or fingerprint) used in several ``places``."""
    return [
        lint_finding(
            "TML-C010", f"the same {what} in {len(where)} configurations", ", ".join(where)
        )
        for where in places.values()
        if len(where) > 1
    ]


def lint_conf_files(paths: Sequence[Path]) -> list[Finding]:
    """Lint Spark properties files (spark-defaults.conf), each one configuration, and
    flag a literal ``spark.authenticate.secret`` that several of them share. Raises
    :class:`~trustedml.errors.SparkConfigError` for a file that cannot be read or parsed."""
    findings: list[Finding] = []
    secrets: dict[str, list[str]] = {}
    for path in paths:
        props = read_properties(path)
        findings += lint_properties(props, str(path))
        conf = _Conf(props, str(path))
        key = "spark.authenticate.secret"
        if key in conf.last and is_literal_secret(key, conf.value(key)):
            secrets.setdefault(secret_digest(conf.value(key)), []).append(conf.where(key))
    findings += shared_secret_findings(secrets, "literal spark.authenticate.secret")
    return ordered_findings(findings)
