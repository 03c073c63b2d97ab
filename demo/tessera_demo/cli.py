"""``python -m tessera_demo demo|outage-probe``: drive a running local stack from outside.

The stack itself is ``python -m tessera_stack`` (up, row, kill-replica, down,
...); these commands only talk to it, over HTTPS through nginx and through
that command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from tessera_demo import outage, rows_walk
from tessera_stack.state import Layout


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tessera_demo",
        description="Drive tessera's running local stack: the demonstration and the outage probe.",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(".run"),
        help="the stack's run directory (default ./.run)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="walk the demonstration rows and print a table")
    rows_walk.add_arguments(demo)
    probe = commands.add_parser(
        "outage-probe",
        help="take the stack's Redis away under a stream of GETs, bring it back, print figures",
    )
    outage.add_arguments(probe)
    return parser


#: Each command's function, given the run directory's layout and the parsed arguments.
COMMANDS: dict[str, Callable[[Layout, argparse.Namespace], int]] = {
    "demo": rows_walk.run_from_cli,
    "outage-probe": outage.run_from_cli,
}


def main(argv: list[str] | None = None) -> int:
    """Run the demo CLI; returns the process exit status."""
    args = _parser().parse_args(argv)
    run_dir: Path = args.run_dir
    layout = Layout(run_dir if run_dir.is_absolute() else Path.cwd() / run_dir)
    return COMMANDS[args.command](layout, args)
