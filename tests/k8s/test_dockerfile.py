"""The image recipes, read as Docker reads them (no Docker engine runs here): pinned
bases, Java 17, the project from the build context, user 185 and the design's
ENTRYPOINT, no key material in any layer, the enclave key only as a BuildKit secret,
the manifest signed at build, and a build context that leaves keys and .venv out."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT
from trustedml import __version__
from trustedml.k8s import IMAGE_PYTHON
from trustedml.k8s._render import IMAGE_FS_JAR

DOCKER = ROOT / "docker"
ENTRYPOINT = [IMAGE_PYTHON, "-m", "trustedml.k8s.entrypoint"]
_KEY_MATERIAL = re.compile(
    r"\.(pem|key|p12|jks)\b|secrets\.sealed|keys\.toml|passphrase|enclave-key|sim-key", re.I
)
_SECRET_NAME = re.compile(r"key|secret|password|passphrase|token", re.I)


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its stage (0-based), keyword and argument text."""

    stage: int
    stage_name: str | None
    keyword: str
    args: str
    line: int


@dataclass(frozen=True)
class Dockerfile:
    global_args: dict[str, str]
    instructions: tuple[Instruction, ...]

    def of(self, keyword: str, stage: int | None = None) -> list[Instruction]:
        return [
            i
            for i in self.instructions
            if i.keyword == keyword and (stage is None or i.stage == stage)
        ]

    @property
    def last_stage(self) -> int:
        return self.instructions[-1].stage


def parse(path: Path) -> Dockerfile:
    """Instructions with continuation lines joined and comments dropped (also inside a
    continued instruction, as Docker does); ARGs before the first FROM kept apart."""
    logical: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        logical.append((start, " ".join(pending)))
        pending = []
    assert not pending, f"{path}: a continuation line ends the file"
    global_args: dict[str, str] = {}
    out: list[Instruction] = []
    stage, name = -1, None
    for number, text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
        elif stage < 0:
            assert keyword == "ARG", f"{path}:{number}: {keyword} before FROM"
            arg, _, default = args.partition("=")
            global_args[arg] = default
            continue
        out.append(Instruction(stage, name, keyword, args.strip(), number))
    return Dockerfile(global_args, tuple(out))


def _resolve(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


RUNTIME = parse(DOCKER / "Dockerfile")
GRAMINE = parse(DOCKER / "Dockerfile.gramine")
FILES = {"Dockerfile": RUNTIME, "Dockerfile.gramine": GRAMINE}


def _stage_args(docker: Dockerfile, stage: int) -> dict[str, str]:
    args = dict(docker.global_args)
    for ins in docker.of("ARG", stage):
        name, _, default = ins.args.partition("=")
        args[name] = default or args.get(name, "")
    return args


@pytest.mark.parametrize("name", FILES)
def test_every_base_image_is_pinned(name: str) -> None:
    docker = FILES[name]
    stages: set[str] = set()
    for ins in docker.of("FROM"):
        image = _resolve(ins.args.split()[0], docker.global_args)
        if image not in stages:
            repo, _, tag = image.partition("@")[0].rpartition(":")
            assert repo, f"{name}:{ins.line}: {image} has no tag"
            assert tag != "latest", f"{name}:{ins.line}: {image}"
            assert "@sha256:" in image or re.search(r"\d", tag), f"{name}:{ins.line}: {image}"
        if ins.stage_name:
            stages.add(ins.stage_name)


def test_the_runtime_image_is_debian_with_java_17_and_python_3_11() -> None:
    (base,) = {_resolve(i.args.split()[0], RUNTIME.global_args) for i in RUNTIME.of("FROM")}
    assert base.startswith("debian:bookworm-")
    assert base.endswith("-slim")
    build, runtime = (" ".join(i.args for i in RUNTIME.of("RUN", s)) for s in (0, 1))
    assert "openjdk-17-jdk-headless" in build  # javac for the jars
    assert "openjdk-17-jre-headless" in runtime
    assert not re.search(r"-jdk\b|-jdk-", runtime)  # the compiler stays in the build stage
    assert "python3.11" in build
    assert "python3.11" in runtime
    assert "tini" in runtime  # PID 1 reaps Spark's children, as in Spark's image


def test_the_project_is_installed_from_the_build_context_with_pinned_pyspark() -> None:
    (copy,) = RUNTIME.of("COPY", 0)
    assert copy.args == ". /src"
    install = " ".join(i.args for i in RUNTIME.of("RUN", 0))
    assert '"/src[spark,k8s]"' in install
    assert '"pyspark==${PYSPARK_VERSION}"' in install
    pinned = RUNTIME.global_args["PYSPARK_VERSION"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (spec,) = [r for r in project["project"]["optional-dependencies"]["spark"] if "pyspark" in r]
    low, high = re.fullmatch(r"pyspark>=([\d.]+),<([\d.]+)", spec).groups()  # type: ignore[union-attr]

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.split("."))

    assert version(low) <= version(pinned) < version(high)
    # The runtime stage copies the venv and the jars built there, under the paths the
    # render's conf names.
    assert [i.args for i in RUNTIME.of("COPY", 1)] == ["--from=build /opt/trustedml /opt/trustedml"]
    jar = IMAGE_FS_JAR.removeprefix("local://")
    assert f"/opt/trustedml/jars/{Path(jar).name}" in install
    assert IMAGE_PYTHON.startswith("/opt/trustedml/venv/")


def test_the_python_the_recipes_run_names_what_exists() -> None:
    for docker in FILES.values():
        text = " ".join(i.args for i in docker.of("RUN"))
        for module in re.findall(r"python -m ([\w.]+)", text):
            importlib.import_module(module)
        for module, names in re.findall(r"from ([\w.]+) import ([\w, ]+);", text):
            imported = importlib.import_module(module)
            for attr in names.split(","):
                assert hasattr(imported, attr.strip()), (module, attr)


@pytest.mark.parametrize("name", FILES)
def test_user_185_runs_the_designs_entrypoint(name: str) -> None:
    docker = FILES[name]
    final = docker.last_stage
    tail = [i for i in docker.instructions if i.stage == final]
    users = [i for i in tail if i.keyword == "USER"]
    (entrypoint,) = [i for i in tail if i.keyword == "ENTRYPOINT"]
    assert users, f"{name}: the final stage sets no USER"
    assert users[-1].args == "185"
    assert users[-1].line < entrypoint.line
    assert json.loads(entrypoint.args) == ENTRYPOINT  # exec form: no shell


@pytest.mark.parametrize("name", FILES)
def test_no_key_material_enters_a_layer(name: str) -> None:
    docker = FILES[name]
    assert not docker.of("ADD"), f"{name}: ADD (URLs, archives) is not used"
    for ins in docker.of("COPY"):
        assert not _KEY_MATERIAL.search(ins.args), f"{name}:{ins.line}: {ins.args}"
    for ins in [*docker.of("ARG"), *docker.of("ENV")]:
        for word in re.findall(r"(\w+)=", ins.args + "="):
            assert not _SECRET_NAME.search(word), f"{name}:{ins.line}: {word} as ARG/ENV"
    for ins in docker.of("RUN"):
        if "enclave-key" in ins.args:
            assert ins.args.startswith("--mount=type=secret,id=enclave-key,required=true "), (
                f"{name}:{ins.line}: the enclave key outside a BuildKit secret mount"
            )


def test_the_gramine_image_signs_its_manifest_at_build_with_a_buildkit_secret() -> None:
    (base,) = GRAMINE.of("FROM")
    assert base.args.startswith("${RUNTIME_IMAGE}")
    assert GRAMINE.global_args["RUNTIME_IMAGE"] == f"trusted-ml:{__version__}"
    args = _stage_args(GRAMINE, 0)
    assert re.fullmatch(r"\d+\.\d+", args["GRAMINE_VERSION"])
    runs = GRAMINE.of("RUN")
    text = " ".join(i.args for i in runs)
    assert '"gramine=${GRAMINE_VERSION}*"' in text
    assert text.count("signed-by=/usr/share/keyrings/") == 2  # each repository pinned
    (make,) = [i for i in runs if "trustedml.k8s._pod_gramine" in i.args]
    (sign,) = [i for i in runs if "gramine-sgx-sign" in i.args]
    assert make.line < sign.line
    assert sign.args.startswith("--mount=type=secret,id=enclave-key,required=true ")
    assert "--key /run/secrets/enclave-key" in sign.args
    assert "--manifest /opt/trustedml/gramine/trustedml-pod.manifest" in sign.args
    assert "> /opt/trustedml/gramine/mrenclave" in sign.args
    # The key is used nowhere else.
    assert [i for i in GRAMINE.instructions if "enclave-key" in i.args] == [sign]


# -- the build context ------------------------------------------------------------------


def _rules() -> list[tuple[re.Pattern[str], bool]]:
    rules = []
    for raw in (DOCKER / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((re.compile(regex), keep))
    return rules


def excluded(path: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    out = False
    for regex, keep in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            out = not keep
    return out


def test_each_dockerfile_reads_the_one_ignore_list() -> None:
    for name in ("Dockerfile.dockerignore", "Dockerfile.gramine.dockerignore"):
        assert (DOCKER / name).resolve() == (DOCKER / ".dockerignore").resolve()


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/config",
        "keys/keys.toml",
        "my-keys/secrets.sealed",
        "enclave-key.pem",
        "datasets/mnist/train.csv",
        "tests/conftest.py",
        "src/trustedml/.venv/lib/x.py",
        "src/trustedml/__pycache__/runtime.cpython-311.pyc",
        "src/trustedml/keys/enclave-key.pem",
        "src/keys.toml",
        "src/trustedml/data/secrets.sealed",
        "src/ml/keystore.p12",
        "src/people.csv.tml",
        "src/passphrase.txt",
    ],
)
def test_the_build_context_leaves_out(path: str) -> None:
    assert excluded(path, _rules())


def test_the_build_context_is_the_package_and_its_metadata() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    sent = {p for p in tracked if not excluded(p, _rules())}
    assert {"pyproject.toml", "README.md", "LICENSE"} <= sent
    package = {p for p in tracked if p.startswith("src/trustedml/")}
    assert package <= sent  # the attestation roots' .pem files too
    assert sent - package == {"pyproject.toml", "README.md", "LICENSE"}
