from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from tests.conftest import PASSPHRASE, cli_env, run_cli, write_passphrase_file
from tests.keys.test_directory import snapshot
from trustedml import KeyDirectory, Secret


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A key directory made by the real CLI (default scrypt cost) and its passphrase file."""
    root = tmp_path_factory.mktemp("cli")
    pp = write_passphrase_file(root / "pp")
    result = run_cli(["keys", "init", str(root / "keys"), "--passphrase-file", str(pp)])
    assert result.returncode == 0, result.stderr
    assert "created key directory" in result.stderr
    return root / "keys", pp


def test_init_then_show(initialised: tuple[Path, Path]) -> None:
    keys_dir, _ = initialised
    result = run_cli(["keys", "show", str(keys_dir)])
    assert result.returncode == 0, result.stderr
    keys = KeyDirectory(keys_dir)
    assert keys.manifest.enclave_mrsigner[:40] in result.stdout.replace("\n", "").replace(
        "│", ""
    ).replace(" ", "")
    assert "scrypt(log2_n=17, r=8, p=1)" in result.stdout


def test_show_json_and_check_never_print_secrets(initialised: tuple[Path, Path]) -> None:
    keys_dir, pp = initialised
    result = run_cli(
        ["keys", "show", str(keys_dir), "--json", "--check", "--passphrase-file", str(pp)]
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["fingerprints"]["enclave_mrsigner"] == doc["manifest"]["enclave_mrsigner"]
    assert "vault unsealed" in doc["checks"]
    opened = KeyDirectory(keys_dir).unseal(Secret(PASSPHRASE))
    for name in opened:
        value = opened[name].reveal_text()
        assert value[:24] not in result.stdout + result.stderr


def test_wrong_passphrase_exits_1_with_one_line_and_changes_nothing(
    initialised: tuple[Path, Path], tmp_path: Path
) -> None:
    keys_dir, _ = initialised
    bad = write_passphrase_file(tmp_path / "bad", "definitely wrong")
    new = write_passphrase_file(tmp_path / "new", "a new passphrase")
    before = snapshot(keys_dir)
    for args in (
        ["keys", "show", str(keys_dir), "--check", "--passphrase-file", str(bad)],
        ["keys", "passwd", str(keys_dir), "--passphrase-file", str(bad),
         "--new-passphrase-file", str(new)],
    ):  # fmt: skip
        result = run_cli(args)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "wrong passphrase" in lines[0]
        assert "secrets.sealed" in lines[0]
        assert "Traceback" not in result.stderr
    assert snapshot(keys_dir) == before


def test_init_refuses_existing_directory(initialised: tuple[Path, Path]) -> None:
    keys_dir, pp = initialised
    before = snapshot(keys_dir)
    result = run_cli(["keys", "init", str(keys_dir), "--passphrase-file", str(pp)])
    assert result.returncode == 2  # a usage error: another directory, or --force
    assert "already exists" in result.stderr
    assert "--force" in result.stderr
    assert snapshot(keys_dir) == before


def test_missing_passphrase_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli(["keys", "init", str(tmp_path / "k")])
    assert result.returncode == 2
    assert "--passphrase-file" in result.stderr
    assert not (tmp_path / "k").exists()


def test_passphrase_file_from_environment(tmp_path: Path) -> None:
    pp = write_passphrase_file(tmp_path / "pp")
    result = run_cli(
        ["keys", "init", str(tmp_path / "k")],
        env=cli_env(TRUSTEDML_PASSPHRASE_FILE=str(pp)),
    )
    assert result.returncode == 0, result.stderr
    KeyDirectory(tmp_path / "k").unseal(Secret(PASSPHRASE))


def test_world_readable_passphrase_file_is_refused(tmp_path: Path) -> None:
    pp = write_passphrase_file(tmp_path / "pp")
    pp.chmod(0o644)
    result = run_cli(["keys", "init", str(tmp_path / "k"), "--passphrase-file", str(pp)])
    assert result.returncode == 2
    assert "permissions too open" in result.stderr


def test_passphrase_from_stdin_and_passwd(initialised: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    keys_dir = tmp_path / "keys"
    shutil.copytree(initialised[0], keys_dir)
    new = write_passphrase_file(tmp_path / "new", "the next passphrase")
    result = subprocess.run(
        [sys.executable, "-m", "trustedml", "keys", "passwd", str(keys_dir),
         "--passphrase-file", "-", "--new-passphrase-file", str(new)],
        input=PASSPHRASE + "\n", capture_output=True, text=True, timeout=60, check=False,
        env=cli_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    KeyDirectory(keys_dir).unseal(Secret("the next passphrase"))


def test_show_on_a_non_key_directory(tmp_path: Path) -> None:
    result = run_cli(["keys", "show", str(tmp_path)])
    assert result.returncode == 2  # the argument is wrong: a usage error
    assert "is not a key directory" in result.stderr


def test_list_keks_prints_ids_and_the_directory_is_private(
    initialised: tuple[Path, Path], tmp_path: Path
) -> None:
    keys_dir = tmp_path / "keys"
    shutil.copytree(initialised[0], keys_dir)
    _, pp = initialised
    made = run_cli(["keys", "new-kek", str(keys_dir), "models", "--passphrase-file", str(pp)])
    assert made.returncode == 0, made.stderr
    listed = run_cli(["keys", "list-keks", str(keys_dir), "--passphrase-file", str(pp)])
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["models"]
    # What `keys init` made: private directories and files.
    assert stat.S_IMODE(initialised[0].stat().st_mode) == 0o700
    for path in initialised[0].rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


@pytest.mark.parametrize(
    ("where", "mode", "expected"),
    [(".", 0o755, "0700"), (".", 0o711, "0700"), ("secrets.sealed", 0o644, "0600")],
)
def test_list_keks_names_the_mode_a_directory_or_file_needs(
    initialised: tuple[Path, Path], tmp_path: Path, where: str, mode: int, expected: str
) -> None:
    keys_dir = tmp_path / "keys"
    shutil.copytree(initialised[0], keys_dir)
    target = keys_dir / where
    target.chmod(mode)
    _, pp = initialised
    result = run_cli(["keys", "list-keks", str(keys_dir), "--passphrase-file", str(pp)])
    assert result.returncode == 2  # fixed by a chmod, like a too-open passphrase file
    assert result.stdout == ""
    shown = keys_dir if where == "." else target
    assert result.stderr.strip() == (
        f"error: permissions too open on {shown}: expected {expected} (or stricter), "
        f"got {mode:04o} (chmod {expected[1:]} {shown})"
    )


def test_an_error_naming_markup_like_text_prints_it_as_text(tmp_path: Path) -> None:
    # Error lines are rendered with rich: a path that looks like a closing tag once made
    # the error handler itself crash with a traceback.
    where = tmp_path / "no[/bold]dir"
    result = run_cli(["keys", "show", str(where)])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {where} is not a key directory")
