"""Reading a folder of manifests for the doctor: every YAML and JSON document with its
file and line, the render's spark.properties, spark-submit.json and render.json."""

from __future__ import annotations

import functools
import importlib
import json
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustedml.errors import KubernetesError, SparkConfigError
from trustedml.spark import SparkProperty, read_properties

# Far above any real manifest (the API server stores objects of at most ~1.5 MiB).
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_FILES = 1000
_MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
_PROPERTIES_SUFFIXES = (".properties",)
ARGV_FILE = "spark-submit.json"
SUMMARY_FILE = "render.json"


class _Map(dict[Any, Any]):
    """A YAML mapping that remembers the line it starts on."""

    __slots__ = ("line",)

    def __init__(self) -> None:
        super().__init__()
        self.line: int | None = None


class _Seq(list[Any]):
    """A YAML sequence that remembers the line it starts on."""

    __slots__ = ("line",)

    def __init__(self) -> None:
        super().__init__()
        self.line: int | None = None


def as_map(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one (a malformed field is skipped)."""
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` if it is a list, else an empty one."""
    return value if isinstance(value, list) else []


def as_str(value: Any) -> str:
    """``value`` as text: a YAML scalar (``true``, ``8``) as Kubernetes would read it;
    a list or mapping (malformed there) as empty."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    # Not str() of a list or mapping: YAML aliases can make one huge to print.
    return value if isinstance(value, str) else ""


def line_of(value: Any) -> int | None:
    """The line a YAML mapping or sequence starts on (None for JSON and scalars)."""
    return value.line if isinstance(value, _Map | _Seq) else None


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes object of the folder and where it is."""

    file: str
    line: int | None
    doc: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return as_str(self.doc.get("kind"))

    @property
    def metadata(self) -> Mapping[str, Any]:
        return as_map(self.doc.get("metadata"))

    @property
    def name(self) -> str:
        meta = self.metadata
        return as_str(meta.get("name")) or as_str(meta.get("generateName")) or "(unnamed)"

    def namespace(self, default: str) -> str:
        return as_str(self.metadata.get("namespace")) or default

    def where(self, detail: str = "", at: Any = None) -> str:
        """``file:line Kind/name detail``; the line of ``at`` (a mapping) if it has one."""
        line = line_of(at) or self.line
        place = f"{self.file}:{line}" if line else self.file
        text = f"{place} {self.kind}/{self.name}"
        return f"{text} {detail}" if detail else text


@dataclass
class Folder:
    """What the doctor read from a folder."""

    manifests: list[Manifest] = field(default_factory=list)
    properties: dict[str, Sequence[SparkProperty]] = field(default_factory=dict)
    argv: list[str] | None = None
    summary: Mapping[str, Any] = field(default_factory=dict)

    def of_kind(self, *kinds: str) -> Iterator[Manifest]:
        return (m for m in self.manifests if m.kind in kinds)


@functools.cache
def _loader() -> Any:
    # Imported here: pyyaml is the k8s extra, and `import trustedml` stays fast.
    try:
        yaml = importlib.import_module("yaml")
    except ImportError as exc:
        raise KubernetesError(
            "reading manifests needs pyyaml: pip install 'trusted-ml[k8s]'"
        ) from exc
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    def construct_map(loader: Any, node: Any) -> Iterator[_Map]:
        data = _Map()
        data.line = node.start_mark.line + 1
        yield data
        data.update(loader.construct_mapping(node))

    def construct_seq(loader: Any, node: Any) -> Iterator[_Seq]:
        data = _Seq()
        data.line = node.start_mark.line + 1
        yield data
        data.extend(loader.construct_sequence(node))

    loader: Any = type("ManifestLoader", (base,), {})
    loader.add_constructor("tag:yaml.org,2002:map", construct_map)
    loader.add_constructor("tag:yaml.org,2002:seq", construct_seq)
    return yaml, loader


def _read_text(path: Path, name: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KubernetesError(
            f"{name}: expected UTF-8 text, got an invalid byte at offset {exc.start}"
        ) from exc


def _yaml_documents(text: str, name: str) -> list[tuple[int, Any]]:
    yaml, loader = _loader()
    docs: list[tuple[int, Any]] = []
    try:
        for number, doc in enumerate(yaml.load_all(text, Loader=loader), 1):
            docs.append((number, doc))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise KubernetesError(f"{where}: expected YAML, got a syntax error ({problem})") from exc
    except RecursionError as exc:
        raise KubernetesError(f"{name}: expected YAML, got nesting too deep to read") from exc
    except (ValueError, TypeError, OverflowError) as exc:
        # A scalar PyYAML resolves but cannot build, such as the date 2024-13-45.
        raise KubernetesError(
            f"{name}: expected YAML, got a value that cannot be read ({exc})"
        ) from exc
    return docs


def _json_document(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise KubernetesError(f"{name}:{exc.lineno}: expected JSON, got {exc.msg}") from exc
    except RecursionError as exc:
        raise KubernetesError(f"{name}: expected JSON, got nesting too deep to read") from exc


def _add_objects(folder: Folder, name: str, number: int, doc: Any) -> None:
    if doc is None:
        return  # an empty document (a trailing ---)
    line = line_of(doc)
    where = f"{name}:{line}" if line else name
    if not isinstance(doc, Mapping):
        raise KubernetesError(
            f"{where}: expected a Kubernetes object (a mapping) as document {number}, "
            f"got a {type(doc).__name__}"
        )
    if as_str(doc.get("kind")).endswith("List"):
        for item in as_list(doc.get("items")):
            _add_objects(folder, name, number, item)
    elif isinstance(doc.get("kind"), str):
        folder.manifests.append(Manifest(name, line, doc))
    # A mapping without a kind (a values file, a kustomization) is no object: skipped.


def _read_json(folder: Folder, name: str, text: str) -> None:
    doc = _json_document(text, name)
    if name == ARGV_FILE:
        if not (isinstance(doc, list) and all(isinstance(a, str) for a in doc)):
            raise KubernetesError(f"{name}: expected a JSON list of strings (an argv)")
        folder.argv = doc
    elif name == SUMMARY_FILE:
        if not isinstance(doc, Mapping):
            raise KubernetesError(f"{name}: expected a JSON object (the render's summary)")
        folder.summary = doc
    else:
        _add_objects(folder, name, 1, doc)


def _regular_files(directory: Path) -> list[Path]:
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        raise KubernetesError(f"cannot read {directory}: {exc.strerror or exc}") from exc
    files = []
    for path in entries:
        if not path.name.endswith(_MANIFEST_SUFFIXES + _PROPERTIES_SUFFIXES):
            continue
        try:
            info = path.stat()
        except OSError as exc:
            raise KubernetesError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(info.st_mode):
            continue  # a directory or a FIFO named *.yaml: nothing to read
        if info.st_size > MAX_FILE_BYTES:
            raise KubernetesError(
                f"{path.name}: expected a manifest of at most {MAX_FILE_BYTES} bytes, got "
                f"{info.st_size}"
            )
        files.append(path)
    if len(files) > MAX_FILES:
        raise KubernetesError(f"{directory}: expected at most {MAX_FILES} files, got {len(files)}")
    return files


def read_folder(directory: Path) -> Folder:
    """Every manifest, properties file and argv of ``directory`` (not its subfolders).
    Raises :class:`KubernetesError` naming the file (and line) of anything that cannot
    be read: not a directory, malformed YAML or JSON, a document that is not a mapping,
    a file too big."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KubernetesError(f"{directory}: expected a folder of manifests (a render's --out)")
    folder = Folder()
    for path in _regular_files(directory):
        name = path.name
        try:
            if name.endswith(_PROPERTIES_SUFFIXES):
                folder.properties[name] = read_properties(path)
                continue
            text = _read_text(path, name)
        except SparkConfigError as exc:
            raise KubernetesError(str(exc).replace(str(path), name)) from exc
        except OSError as exc:
            raise KubernetesError(f"cannot read {name}: {exc.strerror or exc}") from exc
        if name.endswith(".json"):
            _read_json(folder, name, text)
        else:
            for number, doc in _yaml_documents(text, name):
                _add_objects(folder, name, number, doc)
    return folder
