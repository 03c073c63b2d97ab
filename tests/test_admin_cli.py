"""The admin command line (``python -m tessera_auth``) as an operator meets it: how it
asks for a password, what it says without a terminal, its help and its version.

Nothing here reaches a server: every case is decided before the command connects
(the commands' effects on the database are tests/test_token_lifecycle.py's).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from tessera_auth.cli_common import CommandError, UsageError
from tessera_auth.cli_users import read_new_password

# Unreachable on purpose: a command that got as far as connecting would fail otherwise.
ENVIRON = {
    "TESSERA_ENV": "development",
    "DATABASE_URL": "postgresql://tessera@127.0.0.1:1/tessera",
    "REDIS_URL": "redis://127.0.0.1:1/0",
}


def _admin(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m tessera_auth ARGS``, with ``stdin`` (default: none, not a terminal)."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    return subprocess.run(
        [sys.executable, "-m", "tessera_auth", *args],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        env={**keep, **ENVIRON},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_users_create_without_a_terminal_or_password_stdin_is_a_usage_error() -> None:
    result = _admin("users", "create", "alice")
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "tessera-auth: no terminal to ask for the password on" in result.stderr
    assert "--password-stdin" in result.stderr
    assert "Traceback" not in result.stderr
    assert "EOFError" not in result.stderr


def test_password_stdin_with_nothing_on_stdin_is_a_usage_error() -> None:
    result = _admin("users", "create", "alice", "--password-stdin", stdin="")
    assert result.returncode == 2, result
    assert "--password-stdin: standard input gave no password" in result.stderr
    assert "Traceback" not in result.stderr


def test_password_stdin_takes_the_first_line_without_its_line_ending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a passphrase with spaces \r\nsecond line\n"))
    assert read_new_password(from_stdin=True) == "a passphrase with spaces "


def test_the_prompt_asks_twice_on_a_terminal_and_refuses_two_different_passwords(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter(["first passphrase", "second passphrase", "same", "same"])
    prompts: list[str] = []

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("sys.stdin", _Terminal())
    monkeypatch.setattr("getpass.getpass", getpass)
    with pytest.raises(CommandError, match="the passwords differ") as refused:
        read_new_password(from_stdin=False)
    assert not isinstance(refused.value, UsageError)
    assert prompts == ["password: ", "again: "]
    assert read_new_password(from_stdin=False) == "same"


def test_end_of_input_at_the_prompt_is_a_usage_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def getpass(prompt: str) -> str:
        raise EOFError

    monkeypatch.setattr("sys.stdin", _Terminal())
    monkeypatch.setattr("getpass.getpass", getpass)
    with pytest.raises(UsageError, match="no password given"):
        read_new_password(from_stdin=False)


def test_help_lists_every_command_with_a_sentence_and_names_the_program() -> None:
    result = _admin("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m tessera_auth [-h] [--version] COMMAND")
    for command in ("serve", "check", "migrate", "users", "sessions", "keys", "audit"):
        assert f"\n    {command} " in result.stdout, command
    users = _admin("users", "--help")
    assert users.returncode == 0, users.stderr
    assert "usage: python -m tessera_auth users [-h] COMMAND ..." in users.stdout
    for command in ("create", "show", "disable", "enable"):
        assert f"\n    {command} " in users.stdout, command
    create = _admin("users", "create", "--help")
    assert "--password-stdin  read the password from the first line of standard input" in (
        create.stdout
    )
