"""`--help` of every group: each command's summary whole, no word the user does not know."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from trustedml.cli import cli  # noqa: TID251  (a test of the CLI itself)


def _groups(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            found += _groups(command, (*path, name))
    return found


def _commands(group: click.Group) -> list[click.Command]:
    ctx = click.Context(group)
    out: list[click.Command] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        out.append(command)
        if isinstance(command, click.Group):
            out += _commands(command)
    return out


GROUPS = _groups(cli)


@pytest.mark.parametrize("path", GROUPS, ids=lambda p: " ".join(("trustedml", *p)))
def test_every_command_summary_is_whole(path: tuple[str, ...]) -> None:
    # The width a pipe or a CI log gets: click cuts a long summary with "..." and
    # a first sentence at its first period ("(e.g.").
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    listing = result.output.partition("\nCommands:\n")[2]
    rows = [line for line in listing.splitlines() if line.strip()]
    assert rows, result.output
    for row in rows:
        assert re.match(r"^  \S+\s{2,}\S", row), f"a summary wrapped or is missing: {row!r}"
        summary = re.split(r"\s{2,}", row.strip(), maxsplit=1)[1]
        assert not summary.endswith("..."), row
        assert summary.endswith("."), row
        assert not re.search(r"\b(e\.g|i\.e)\.$", summary), row
        assert summary.count("(") == summary.count(")"), row


def test_the_groups_walked_are_all_of_them() -> None:
    assert {" ".join(p) for p in GROUPS} >= {
        "", "keys", "attest", "broker", "broker key", "broker key policy", "broker audit"
    }  # fmt: skip


def test_no_help_text_speaks_of_a_seed() -> None:
    for command in [cli, *_commands(cli)]:
        texts = [command.help or "", command.short_help or ""]
        texts += [getattr(p, "help", None) or "" for p in command.params]
        for text in texts:
            assert "seed" not in text.lower(), (command.name, text)
