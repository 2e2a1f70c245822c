"""`anruf … --help` works for every command and subcommand (found from the usage
lines themselves, so a new command is covered without a change here)."""

from __future__ import annotations

import itertools
import re

import pytest

from signaling.cli import main

_CHOICES = re.compile(r"\{([a-z][a-z0-9_,-]*)\}")


def _subcommands(usage: str) -> list[str]:
    """The choices of the subcommand positional in a usage text (not an option's
    choices, such as ``--relay-mode {forward,transcode}``)."""
    tokens = usage.split()
    names: list[str] = []
    for before, token in itertools.pairwise(tokens):
        match = _CHOICES.fullmatch(token)
        takes_it = before.lstrip("[").startswith("-") and not before.endswith("]")
        if match and not takes_it:
            names.extend(match.group(1).split(","))
    return names


def _help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 0, (argv, err)
    assert out.startswith("usage: anruf"), (argv, out)
    return out


def test_every_command_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []
    todo: list[list[str]] = [[]]
    while todo and len(seen) < 100:
        argv = todo.pop()
        usage = _help(capsys, argv).split("\n\n", 1)[0]
        seen.append(" ".join(argv))
        todo.extend([*argv, name] for name in _subcommands(usage))
    # The commands a user reaches from the README and docs/operations.md.
    for command in ("serve", "relay", "login", "call", "answer", "loadtest", "operator", "db"):
        assert command in seen, seen
    assert len(seen) > 10
