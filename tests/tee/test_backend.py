import pytest

from trustedml import ConfigError, NoTee, TeeBackend, get_backend


def test_none_backend_runs_the_command_unchanged() -> None:
    backend = get_backend("none")
    assert isinstance(backend, TeeBackend)
    assert backend.name == "none"
    assert backend.hardware_protected is False
    assert backend.wrap(["python", "app.py"], {}) == ["python", "app.py"]
    assert isinstance(backend, NoTee)


@pytest.mark.parametrize("name", ["sim", "gramine", "cvm", ""])
def test_backends_not_built_yet_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=f"--tee: expected one of none, got '{name}'"):
        get_backend(name)
