"""The package layers of src/trustedml, checked on every import (docs/architecture.md)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import trustedml

SRC = Path(trustedml.__file__).resolve().parent

# The top-level modules below every package (errors and the private helpers): they
# import only each other, and everything may import them.
FOUNDATION = frozenset({"errors", "_secret", "_fs", "_version", "_progress", "_env"})

# The intended graph, written once: unit -> the units it may import. A unit may also
# import whatever those may import (layers, not only neighbours). Units are the
# packages, the top-level modules runtime, jobs, _doctor and _keyagent, "trustedml" (the package's
# own __init__) and __main__; "foundation" is the modules above.
LAYERS: dict[str, frozenset[str]] = {
    "foundation": frozenset(),
    "hazmat": frozenset({"foundation"}),
    "keys": frozenset({"hazmat"}),
    "attestation": frozenset({"hazmat"}),
    "data": frozenset({"keys"}),
    "tee": frozenset({"attestation", "keys", "data"}),
    "spark": frozenset({"tee", "data", "keys"}),
    "broker": frozenset({"data", "keys", "attestation"}),
    "runtime": frozenset({"broker", "tee", "data", "attestation"}),
    "ml": frozenset({"runtime", "spark"}),
    "jobs": frozenset({"spark", "tee", "keys", "data"}),
    "cluster": frozenset({"spark", "tee", "keys", "data"}),
    # Spark on Kubernetes: manifests and conf rendered from the secure Spark settings.
    "k8s": frozenset({"spark", "tee", "keys", "data"}),
    "_doctor": frozenset({"spark", "broker", "cluster", "k8s"}),
    # The executor JVM's key agent process: the attested store (runtime) served over the
    # tml file system's frames (spark).
    "_keyagent": frozenset({"runtime", "spark"}),
    "trustedml": frozenset({"ml", "jobs", "runtime", "_doctor", "cluster", "k8s"}),
    "cli": frozenset({"trustedml"}),
    "__main__": frozenset({"cli"}),
}


def _reachable(unit: str) -> set[str]:
    seen: set[str] = set()
    todo = list(LAYERS[unit])
    while todo:
        below = todo.pop()
        if below not in seen:
            seen.add(below)
            todo.extend(LAYERS[below])
    return seen


@dataclass(frozen=True)
class Import:
    """One import statement's target: ``module`` (dotted, absolute) and, for ``from
    module import name``, the imported ``name``."""

    file: str
    line: int
    module: str
    name: str | None


def _module_of(path: Path, root: Path) -> tuple[str, ...]:
    parts = path.relative_to(root).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path, root: Path) -> Iterator[Import]:
    """Every import in ``path``: top level, in functions, under TYPE_CHECKING."""
    rel = str(path.relative_to(root))
    module = _module_of(path, root)
    package = module if path.name == "__init__.py" else module[:-1]
    for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(rel, node.lineno, alias.name, None)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            source = ".".join((*base, *([node.module] if node.module else [])))
            for alias in node.names:
                yield Import(rel, node.lineno, source, alias.name)


def _unit(module: tuple[str, ...]) -> str | None:
    """The unit a module of trusted-ml belongs to (None: not trusted-ml)."""
    if module[0] != "trustedml":
        return None
    if len(module) == 1:
        return "trustedml"
    return "foundation" if module[1] in FOUNDATION else module[1]


def _target(imp: Import, root: Path) -> tuple[str, ...]:
    """The module an import loads: ``from trustedml import tee`` loads trustedml.tee."""
    parts = tuple(imp.module.split("."))
    if imp.name is not None:
        candidate = root.joinpath(*parts, imp.name)
        if candidate.is_dir() or candidate.with_suffix(".py").is_file():
            return (*parts, imp.name)
    return parts


def _all_imports(root: Path) -> Iterator[tuple[str, Import, tuple[str, ...]]]:
    """(importing unit, import, module it loads) for every file under root/trustedml."""
    for path in sorted((root / "trustedml").rglob("*.py")):
        unit = _unit(_module_of(path, root))
        assert unit is not None
        for imp in _imports(path, root):
            yield unit, imp, _target(imp, root)


def _layer_violations(root: Path) -> list[str]:
    found = []
    for unit, imp, target in _all_imports(root):
        below = _unit(target)
        if below is None or below == unit:
            continue
        if unit not in LAYERS:
            found.append(f"{imp.file}: unit {unit!r} is missing from LAYERS")
        elif below not in _reachable(unit):
            found.append(f"{imp.file}:{imp.line}: {unit} may not import {below} ({imp.module})")
    return sorted(found)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_violations(root: Path) -> list[str]:
    found = []
    for unit, imp, target in _all_imports(root):
        owner = _unit(target)
        if owner is None or owner == unit:
            continue
        # Past the package's own name: a private module, or a private name from it.
        hidden = any(_is_private(part) for part in target[2:])
        loads_module = len(target) > len(imp.module.split("."))
        if hidden or (imp.name and not loads_module and _is_private(imp.name)):
            what = ".".join(target) + (f" ({imp.name})" if imp.name and not loads_module else "")
            found.append(f"{imp.file}:{imp.line}: {unit} imports {owner}'s private {what}")
    return sorted(found)


def test_every_unit_is_in_the_graph() -> None:
    units = {_unit(_module_of(path, SRC.parent)) for path in SRC.rglob("*.py")}
    assert units - LAYERS.keys() == set()
    assert all(below in LAYERS for allowed in LAYERS.values() for below in allowed)


def test_the_graph_has_no_cycle() -> None:
    try:
        order = list(TopologicalSorter(LAYERS).static_order())
    except CycleError as exc:
        pytest.fail(f"the layer graph has a cycle: {exc.args[1]}")
    assert order[0] == "foundation"
    assert order[-1] == "__main__"


def test_every_import_follows_the_layers() -> None:
    assert _layer_violations(SRC.parent) == []


def test_no_module_imports_another_packages_private_module() -> None:
    assert _private_violations(SRC.parent) == []


def test_the_checks_see_every_kind_of_import(tmp_path: Path) -> None:
    package = tmp_path / "trustedml"
    for name in ("__init__.py", "errors.py", "tee/__init__.py", "spark/__init__.py"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text("")
    (package / "spark" / "_config.py").write_text("")
    (package / "tee" / "_probe.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from trustedml.errors import ConfigError\n"
        "if TYPE_CHECKING:\n"
        "    from trustedml.spark import SparkSettings\n"
        "def f():\n"
        "    import trustedml.runtime\n"
        "    from ..spark import _config\n"
        "    from trustedml.spark import _hidden_name\n"
    )
    assert _layer_violations(tmp_path) == [
        "trustedml/tee/_probe.py:4: tee may not import spark (trustedml.spark)",
        "trustedml/tee/_probe.py:6: tee may not import runtime (trustedml.runtime)",
        "trustedml/tee/_probe.py:7: tee may not import spark (trustedml.spark)",
        "trustedml/tee/_probe.py:8: tee may not import spark (trustedml.spark)",
    ]
    assert _private_violations(tmp_path) == [
        "trustedml/tee/_probe.py:7: tee imports spark's private trustedml.spark._config",
        "trustedml/tee/_probe.py:8: tee imports spark's private trustedml.spark (_hidden_name)",
    ]
