"""The ``tessera`` command: the local stack's commands, the demonstration's and the
operators' admin commands on the running stack, under one name.

``./tessera`` at the repository's root runs this module from ``.venv`` (making
``.venv`` first when it is missing); an installed tessera-stack has it as the
``tessera`` console script. It adds no command of its own:

- the stack's (``up``, ``down``, ``status``, ``logs``, ``row``, ``scale``, ...) are
  :mod:`tessera_stack.cli`'s, run in this process;
- ``demo`` and ``outage-probe`` are ``python -m tessera_demo``'s;
- ``users``, ``sessions``, ``keys`` and ``audit`` are ``python -m tessera_auth``'s, run
  in the running stack's auth-service environment (:func:`tessera_stack.launcher.admin_env`:
  its database, Redis user, secrets and issuer), so nothing is set by hand.

The demo and the admin commands replace this process (``exec``): their prompts,
exit status and signals are the user's directly. The deploy toolkit imports
neither package; it names their modules.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import NoReturn

from tessera_stack.cli import (
    COMMANDS,
    RUN_DIR_HELP,
    Command,
    add_run_dir_option,
    add_stack_commands,
    run_command,
    stack_version,
)
from tessera_stack.launcher import admin_env
from tessera_stack.processes import StackError
from tessera_stack.stack_report import error
from tessera_stack.state import Layout

__all__ = ["main"]

PROGRAM = "tessera"

#: ``python -m tessera_demo``'s commands.
DEMO_COMMANDS = {
    "demo": "walk the load-balancer rows 1-6 on the stack and print what each does",
    "outage-probe": "take the stack's Redis away under load, bring it back, print figures",
}
#: ``python -m tessera_auth``'s admin commands, on the running stack.
ADMIN_COMMANDS = {
    "users": "create, show, disable and enable user accounts",
    "sessions": "list and revoke a user's sessions and tokens",
    "keys": "show and rotate the JWT signing keys",
    "audit": "print the audit trail of security events (JSON lines)",
}
# The admin commands name this program in their usage lines.
_RUN_ADMIN = f"from tessera_auth.__main__ import main; main(prog={PROGRAM!r})"

DESCRIPTION = """\
tessera's local stack (PostgreSQL, Redis, the auth service, resource replicas and
nginx with TLS, as local processes under ./.run), its demonstration, and the
operators' commands on the running stack's users, sessions and keys."""

EPILOG = """\
`tessera COMMAND --help` describes a command. Start with `tessera up`; it prints
the URLs, and .run/stack.env holds them for scripts. The admin commands (users,
sessions, keys, audit) work on the running stack's own database and Redis, e.g.
  tessera users create alice                     (asks for the password twice)
  tessera users create alice --password-stdin < password.txt"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROGRAM} {stack_version()}")
    add_run_dir_option(parser, RUN_DIR_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_stack_commands(commands)
    for name, summary in {**DEMO_COMMANDS, **ADMIN_COMMANDS}.items():
        # Everything after the name is the other program's to parse (its --help too).
        passed_on = commands.add_parser(name, help=summary, add_help=False, prefix_chars="\0")
        passed_on.add_argument("arguments", nargs=argparse.REMAINDER)
    return parser


def _exec(argv: list[str], env: Mapping[str, str]) -> NoReturn:
    """Replace this process with ``argv`` (this interpreter running a module)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)  # noqa: S606 - no shell on purpose: argv as given


def _demo(layout: Layout, args: argparse.Namespace) -> int:
    argv = ["--run-dir", str(layout.root), args.command, *args.arguments]
    return _exec([sys.executable, "-m", "tessera_demo", *argv], os.environ)


def _admin(layout: Layout, args: argparse.Namespace) -> int:
    try:
        env = admin_env(layout)
    except StackError as exc:
        # Help and usage need no stack: the command line is parsed before anything is read.
        if args.arguments and not {"-h", "--help"} & set(args.arguments):
            return error(f"{exc} (the admin commands work on the running stack)")
        env = dict(os.environ)
    # An operator at a terminal reads the command's answer, not the service's start-up
    # log; TESSERA_LOG_FORMAT / TESSERA_LOG_LEVEL set by hand still win.
    env.setdefault("TESSERA_LOG_FORMAT", "text")
    env.setdefault("TESSERA_LOG_LEVEL", "WARNING")
    return _exec([sys.executable, "-c", _RUN_ADMIN, args.command, *args.arguments], env)


def main(argv: list[str] | None = None) -> int:
    """Run the ``tessera`` command; the exit status (the demo and the admin commands
    replace this process and never return)."""
    commands: dict[str, Command] = dict(COMMANDS)
    commands.update(dict.fromkeys(DEMO_COMMANDS, _demo))
    commands.update(dict.fromkeys(ADMIN_COMMANDS, _admin))
    return run_command(_parser(), commands, argv)


if __name__ == "__main__":
    raise SystemExit(main())
