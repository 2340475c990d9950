from __future__ import annotations

from pathlib import Path

import pytest

from trustedml import ConfigError, NoTee, PlainSparkConfig, TeeBackend, get_backend
from trustedml.tee import CvmBackend, GramineBackend, Job, SimBackend


def test_none_backend_runs_the_command_unchanged(tmp_path: Path) -> None:
    backend = get_backend("none")
    assert isinstance(backend, TeeBackend)
    assert backend.name == "none"
    assert backend.hardware_protected is False
    assert backend.measures is False
    assert backend.wrap(["python", "app.py"], {}) == ["python", "app.py"]
    assert isinstance(backend, NoTee)
    job = Job(
        launcher="run",
        argv=("python", "app.py"),
        env={"A": "1", "TRUSTEDML_JOB_MEASUREMENT": "inherited, a lie"},
        settings=PlainSparkConfig(),
        conf_dir=tmp_path,
    )
    plan = backend.prepare(job)
    assert plan.argv == ("python", "app.py")
    assert dict(plan.env) == {"A": "1", "TRUSTEDML_TEE": "none"}
    assert plan.launch
    assert plan.banner is None
    assert plan.evidence is None


@pytest.mark.parametrize(
    ("name", "options", "cls", "protected"),
    [
        ("sim", {"key_path": "k.pem"}, SimBackend, False),
        ("gramine", {"manifest_dir": "m", "dry_run": True}, GramineBackend, True),
        ("cvm", {}, CvmBackend, True),
    ],
)
def test_every_backend_follows_the_protocol(
    name: str, options: dict[str, object], cls: type, protected: bool
) -> None:
    backend = get_backend(name, **options)
    assert isinstance(backend, cls)
    assert isinstance(backend, TeeBackend)
    assert backend.name == name
    assert backend.hardware_protected is protected
    assert backend.measures is True


@pytest.mark.parametrize("name", ["sgx", "", "None"])
def test_unknown_backends_are_refused(name: str) -> None:
    with pytest.raises(
        ConfigError, match=f"--tee: expected one of cvm, gramine, none, sim, got '{name}'"
    ):
        get_backend(name)


def test_wrong_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="--tee sim: missing a required argument: 'key_path'"):
        get_backend("sim")
    with pytest.raises(ConfigError, match="--tee none: got an unexpected keyword argument"):
        get_backend("none", key_path="k")


def test_one_table_names_the_backends_and_the_cli_offers_exactly_those() -> None:
    import click

    from trustedml.cli import cli  # noqa: TID251  (the --tee choices come from the table)
    from trustedml.tee import BACKEND_NAMES
    from trustedml.tee._registry import BACKENDS

    assert BACKEND_NAMES == ("cvm", "gramine", "none", "sim")
    assert all(getattr(BACKENDS[name], "name", None) == name for name in BACKEND_NAMES)
    for command in ("submit", "run", "measure"):
        (tee,) = [p for p in cli.commands[command].params if p.name == "tee"]
        assert isinstance(tee.type, click.Choice)
        assert tuple(tee.type.choices) == BACKEND_NAMES, command
