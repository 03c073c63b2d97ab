"""``python -m tessera_stack COMMAND``: the command-line front end of the local stack.

Parses the command line and hands each command to its function in
:mod:`tessera_stack.reconcile` (``up``) or :mod:`tessera_stack.launcher` (the
rest), through one table, :data:`COMMANDS`; what the commands
do is there. The demonstration that drives a running stack from outside
(``demo``, ``outage-probe``) is another package, ``python -m tessera_demo``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import version
from pathlib import Path

from tessera_stack import stack_redis
from tessera_stack.launcher import (
    cmd_add_replica,
    cmd_down,
    cmd_kill_redis,
    cmd_kill_replica,
    cmd_logs,
    cmd_remove_replica,
    cmd_restart_replicas,
    cmd_row,
    cmd_scale,
    cmd_status,
)
from tessera_stack.nginx_conf import POLICIES
from tessera_stack.reconcile import (
    DEFAULT_ALG,
    DEFAULT_HTTPS_PORT,
    DEFAULT_PORT,
    DEFAULT_REPLICAS,
    MAX_REPLICAS,
    UpOptions,
    cmd_up,
)
from tessera_stack.rows import DEFAULT_ROW, ROWS
from tessera_stack.servers import LOOPBACK
from tessera_stack.state import Layout

#: A command's function, given the run directory's layout and the parsed arguments.
Command = Callable[[Layout, argparse.Namespace], int]


def add_run_dir_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--run-dir`` (default ``./.run``): where the stack keeps everything."""
    parser.add_argument("--run-dir", type=Path, default=Path(".run"), help=help)


def run_command(
    parser: argparse.ArgumentParser, commands: Mapping[str, Command], argv: Sequence[str] | None
) -> int:
    """Parse ``argv`` and run its command of ``commands`` on the run directory (a relative
    ``--run-dir`` is the working directory's); the process exit status."""
    args = parser.parse_args(argv)
    run_dir: Path = args.run_dir
    layout = Layout(run_dir if run_dir.is_absolute() else Path.cwd() / run_dir)
    return commands[args.command](layout, args)


def _row_number(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a row number: {text!r}") from None
    if number not in ROWS:
        raise argparse.ArgumentTypeError(f"rows are {min(ROWS)}-{max(ROWS)}")
    return number


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"invalid port {port}")
    return port


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= count <= MAX_REPLICAS:
        raise argparse.ArgumentTypeError(f"the replica count must be 1-{MAX_REPLICAS}")
    return count


def _rows_help() -> str:
    return "; ".join(f"{r.number} = {r.label} ({r.methods}, {r.policy})" for r in ROWS.values())


#: ``--run-dir``'s help in both front ends.
RUN_DIR_HELP = "where the stack keeps data, logs, pids and secrets (default ./.run)"


def stack_version() -> str:
    """The installed tessera-stack's version."""
    return version("tessera-stack")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tessera_stack",
        description=(
            "Run tessera's local stack: PostgreSQL, Redis, the auth service, resource "
            "replicas and nginx with TLS, as local processes."
        ),
    )
    parser.add_argument("--version", action="version", version=f"tessera-stack {stack_version()}")
    add_run_dir_option(parser, RUN_DIR_HELP)
    add_stack_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def add_stack_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The stack's commands (:data:`COMMANDS`), for this front end and ``tessera``'s."""
    up = commands.add_parser("up", help="start the stack (idempotent; completes a partial one)")
    up.add_argument(
        "--port",
        type=_port,
        help=f"the auth service's own port on {LOOPBACK} (default {DEFAULT_PORT})",
    )
    up.add_argument(
        "--https-port",
        type=_port,
        help=f"nginx's TLS port on {LOOPBACK} (default {DEFAULT_HTTPS_PORT})",
    )
    up.add_argument("--alg", help=f"JWT signing algorithm, TESSERA_JWT_ALG (default {DEFAULT_ALG})")
    up.add_argument(
        "--row",
        type=_row_number,
        help=f"demonstration row (default {DEFAULT_ROW}): {_rows_help()}",
    )
    up.add_argument("--policy", choices=POLICIES, help="nginx policy (default: the row's)")
    up.add_argument(
        "--replicas",
        type=_count,
        help=f"number of resource replicas (default {DEFAULT_REPLICAS})",
    )
    up.add_argument(
        "--redis",
        choices=stack_redis.TOPOLOGIES,
        help=(
            "the stack's own Redis: one durable server (default), a Sentinel group "
            "(a primary, 2 replicas, 3 sentinels) or a Cluster (3 primaries, 3 replicas)"
        ),
    )
    up.add_argument(
        "--monitoring",
        action="store_true",
        help="also run Prometheus on 127.0.0.1 (port 9090 if free) scraping the stack, "
        "with the project's alert rules; `down` stops it",
    )

    down = commands.add_parser("down", help="stop everything `up` started")
    down.add_argument(
        "--purge", action="store_true", help="also delete the run directory (data, logs, secrets)"
    )

    commands.add_parser("status", help="show which processes are alive")

    logs = commands.add_parser("logs", help="print the end of a log")
    logs.add_argument(
        "name", nargs="?", help="auth, nginx, nginx-access, r1 (a replica), ... (default: all)"
    )
    logs.add_argument("-n", "--lines", type=int, default=50, help="how many lines (default 50)")

    row = commands.add_parser("row", help="switch the running stack to another row")
    row.add_argument("number", type=_row_number, help=_rows_help())
    row.add_argument("--policy", choices=POLICIES, help="nginx policy (default: the row's)")

    commands.add_parser("add-replica", help="start one more replica and reload nginx")
    remove = commands.add_parser("remove-replica", help="reload nginx without it, then stop it")
    remove.add_argument("id", nargs="?", help="which replica (default: the newest)")
    scale = commands.add_parser("scale", help="add or remove replicas to have N")
    scale.add_argument("count", type=_count, metavar="N", help=f"1-{MAX_REPLICAS}")
    kill = commands.add_parser("kill-replica", help="SIGKILL a replica (a crash; nginx not told)")
    kill.add_argument("id", help="which replica, e.g. r2")
    commands.add_parser(
        "kill-redis",
        help="SIGKILL the stack's own Redis (its primary, for a group); `up` brings it back",
    )
    restart = commands.add_parser(
        "restart-replicas",
        help="rolling restart: one replica at a time, out of nginx while it restarts",
    )
    restart.add_argument("ids", nargs="*", metavar="id", help="which replicas (default: all)")


def _up(layout: Layout, args: argparse.Namespace) -> int:
    options = UpOptions(
        port=args.port,
        https_port=args.https_port,
        alg=args.alg,
        row=args.row,
        policy=args.policy,
        replicas=args.replicas,
        redis=args.redis,
        monitoring=bool(args.monitoring),
    )
    return cmd_up(layout, options)


#: Each command's function.
COMMANDS: dict[str, Command] = {
    "up": _up,
    "row": lambda layout, args: cmd_row(layout, int(args.number), args.policy),
    "add-replica": lambda layout, _: cmd_add_replica(layout),
    "remove-replica": lambda layout, args: cmd_remove_replica(layout, args.id),
    "scale": lambda layout, args: cmd_scale(layout, int(args.count)),
    "kill-replica": lambda layout, args: cmd_kill_replica(layout, str(args.id)),
    "kill-redis": lambda layout, _: cmd_kill_redis(layout),
    "restart-replicas": lambda layout, args: cmd_restart_replicas(
        layout, [str(each) for each in args.ids]
    ),
    "down": lambda layout, args: cmd_down(layout, purge=bool(args.purge)),
    "status": lambda layout, _: cmd_status(layout),
    "logs": lambda layout, args: cmd_logs(layout, args.name, args.lines),
}


def main(argv: list[str] | None = None) -> int:
    """Run the launcher CLI; returns the process exit status."""
    return run_command(_parser(), COMMANDS, argv)
