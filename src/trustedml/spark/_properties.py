"""Reading Spark properties files (spark-defaults.conf) as Spark reads them: Java
.properties syntax, each value trimmed, the last of a repeated key winning."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trustedml.errors import SparkConfigError

# java.util.Properties: these separate a key from its value (besides '=' and ':').
_BLANK = " \t\f"
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
# A spark-defaults file is text; anything larger is not one (Spark would read it whole).
MAX_PROPERTIES_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class SparkProperty:
    """One property as Spark sees it: ``line`` is where its logical line starts (1-based)."""

    key: str
    value: str
    line: int


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Java's LineReader: (first line number, raw logical line), comments and blank
    lines dropped, continuation lines (odd trailing backslashes) joined without their
    leading blanks."""
    natural = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[tuple[int, str]] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(natural, 1):
        line = raw.lstrip(_BLANK)
        if not parts:
            if not line or line[0] in "#!":
                continue
            start = number
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:
            parts.append(line[:-1])
            continue
        parts.append(line)
        out.append((start, "".join(parts)))
        parts = []
    if parts:
        # At the end of the input Java drops a dangling continuation backslash.
        out.append((start, "".join(parts)))
    return out


def _unescape(raw: str, where: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        i += 1
        if ch != "\\":
            out.append(ch)
            continue
        if i == len(raw):
            break
        ch = raw[i]
        i += 1
        if ch == "u":
            digits = raw[i : i + 4]
            if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise SparkConfigError(
                    f"{where}: malformed \\uxxxx escape: expected 4 hex digits, got {digits!r}"
                )
            out.append(chr(int(digits, 16)))
            i += 4
        else:
            out.append(_ESCAPES.get(ch, ch))
    return "".join(out)


def _split(line: str) -> tuple[str, str]:
    """Java's Properties.load0: the key ends at the first unescaped '=', ':' or blank;
    blanks and at most one '=' or ':' follow before the value."""
    escaped = False
    end = len(line)
    value_start = len(line)
    has_sep = False
    for i, ch in enumerate(line):
        if not escaped and ch in "=:":
            end, value_start, has_sep = i, i + 1, True
            break
        if not escaped and ch in _BLANK:
            end, value_start = i, i + 1
            break
        escaped = ch == "\\" and not escaped
    while value_start < len(line):
        ch = line[value_start]
        if ch not in _BLANK:
            if has_sep or ch not in "=:":
                break
            has_sep = True
        value_start += 1
    return line[:end], line[value_start:]


def parse_properties(text: str, source: str = "<text>") -> tuple[SparkProperty, ...]:
    """The properties of ``text`` in file order (a repeated key appears again; Spark
    keeps the last). Values are trimmed as Spark trims them. Raises
    :class:`SparkConfigError` naming ``source:line`` for a malformed escape."""
    props = []
    for number, line in _logical_lines(text):
        key, value = _split(line)
        where = f"{source}:{number}"
        props.append(SparkProperty(_unescape(key, where), _unescape(value, where).strip(), number))
    return tuple(props)


def read_properties(path: Path) -> tuple[SparkProperty, ...]:
    """Read a properties file (UTF-8, as Spark reads it). Raises
    :class:`SparkConfigError` for a file that cannot be read, is binary or not UTF-8."""
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_PROPERTIES_BYTES + 1)
    except OSError as exc:
        raise SparkConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_PROPERTIES_BYTES:
        raise SparkConfigError(
            f"{path}: expected a properties file of at most {MAX_PROPERTIES_BYTES} bytes"
        )
    nul = data.find(b"\0")
    if nul >= 0:
        raise SparkConfigError(
            f"{path}: expected a text properties file, got binary data (a NUL byte at offset {nul})"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SparkConfigError(
            f"{path}: expected UTF-8 text, got an invalid byte at offset {exc.start}"
        ) from exc
    # Like Java, a byte-order mark stays part of the first key (Spark then ignores it).
    return parse_properties(text, str(path))
