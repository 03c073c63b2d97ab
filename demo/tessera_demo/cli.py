"""``python -m tessera_demo demo|outage-probe``: drive a running local stack from outside.

Parses the command line and runs each command through one table,
:data:`COMMANDS`: ``demo`` walks the rows (:mod:`tessera_demo.rows_walk`)
and, with ``--faults``, fails the shared store under rows 4-6
(:mod:`tessera_demo.faults`); ``outage-probe`` takes the running stack's
Redis away and brings it back (:mod:`tessera_demo.outage`). The stack
itself is ``python -m tessera_stack`` (up, row, kill-replica, down, ...),
which these commands drive (:mod:`tessera_demo.stack_control`) and never
the other way round.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from tessera_demo import outage, rows_walk
from tessera_demo.faults import FAULTS, FaultLine, print_faults, run_faults
from tessera_demo.stack_control import StackControl
from tessera_stack.cli import Command, add_run_dir_option, run_command
from tessera_stack.nginx_conf import POLICIES
from tessera_stack.processes import StackError
from tessera_stack.redis_faults import SLOTS
from tessera_stack.rows import ROWS, policy_problem
from tessera_stack.state import Layout

# -- demo ---------------------------------------------------------------------------


def _rows_arg(text: str) -> list[int]:
    numbers: list[int] = []
    for part in text.split(","):
        if "-" in part:
            low, _, high = part.partition("-")
            numbers += range(int(low), int(high) + 1)
        elif part.strip():
            numbers.append(int(part))
    if not numbers or any(number not in ROWS for number in numbers):
        raise argparse.ArgumentTypeError(f"rows are {min(ROWS)}-{max(ROWS)}, e.g. 1-6 or 2,3")
    return numbers


def _stores_arg(text: str) -> tuple[str, ...]:
    stores = tuple(part.strip() for part in text.split(",") if part.strip())
    known = ("single", "sentinel", "cluster")
    if not stores or any(store not in known for store in stores):
        raise argparse.ArgumentTypeError(f"stores are {', '.join(known)}")
    return stores


def _number_option(
    parser: argparse.ArgumentParser,
    flag: str,
    kind: type[int] | type[float],
    default: float,
    help: str,
) -> None:
    """A numeric option whose help ends in its default."""
    parser.add_argument(flag, type=kind, default=default, help=f"{help} (default {default:g})")


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` command's options."""
    parser.add_argument(
        "--rows", type=_rows_arg, default=list(ROWS), help="which rows, e.g. 1-6 or 2,3"
    )
    _number_option(parser, "--users", int, rows_walk.DEFAULT_USERS, "simulated users")
    _number_option(parser, "--rounds", int, rows_walk.DEFAULT_ROUNDS, "requests per user per burst")
    parser.add_argument(
        "--policy",
        choices=POLICIES,
        help="nginx policy for every row shown (default: each row's own), e.g. least_conn",
    )
    parser.add_argument(
        "--faults",
        action="store_true",
        help=(
            "also fail the shared store under rows 4-6 (one Redis, Sentinel, Cluster; "
            "starts stacks of its own for the topologies the stack does not run; minutes)"
        ),
    )
    parser.add_argument(
        "--faults-only",
        action="store_true",
        help="only the shared store's failures, not the replica rows",
    )
    parser.add_argument(
        "--fault-stores",
        type=_stores_arg,
        default=None,
        help="with --faults: which stores, e.g. sentinel,cluster (default: all three)",
    )
    parser.add_argument(
        "--one-network",
        action="store_true",
        help="all users in one /24, as behind one NAT (ip_hash then picks one replica)",
    )


@dataclass(frozen=True)
class DemoOptions:
    """How ``python -m tessera_demo demo`` runs each row."""

    rows: tuple[int, ...]
    users: int = rows_walk.DEFAULT_USERS
    rounds: int = rows_walk.DEFAULT_ROUNDS
    policy: str | None = None
    one_network: bool = False
    #: The shared store's failures (:mod:`tessera_demo.faults`), on these stores.
    fault_stores: tuple[str, ...] = ()


async def _demo(control: StackControl, options: DemoOptions) -> int:
    started_here = not control.running()
    if started_here:
        print("starting the stack for the demo ...", file=sys.stderr, flush=True)
        await control.cli("up")
    state = control.state()
    original_row, original_policy = state.row, state.policy
    reports: list[rows_walk.RowReport] = []

    def progress(message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)

    fault_lines: list[FaultLine] = []
    try:
        for number in options.rows:
            reports.append(
                await rows_walk.run_row(
                    control,
                    number,
                    users=options.users,
                    rounds=options.rounds,
                    policy=options.policy,
                    one_network=options.one_network,
                    progress=progress,
                )
            )
        if options.fault_stores:
            chosen = [f for f in FAULTS if f.topology in options.fault_stores]
            fault_lines = await run_faults(control, faults=chosen, progress=progress)
    finally:
        if started_here:
            print("stopping the stack ...", file=sys.stderr, flush=True)
            await control.cli("down")
        elif original_row is not None:
            print(f"restoring row {original_row} ...", file=sys.stderr, flush=True)
            await control.switch_row(original_row, original_policy or None)
    if reports:
        replicas = len(reports[0].replicas)
        where = "one /24" if options.one_network else "one /24 each"
        print(
            f"\n{options.users} users ({where}), {options.rounds} requests each per burst, "
            f"{replicas} replicas:\n"
        )
        print(rows_walk.format_table(reports))
        print()
        print(rows_walk.LEGEND)
    if fault_lines:
        print_faults(fault_lines)
    as_designed = all(not r.unexpected() for r in reports) and all(
        not line.unexpected() for line in fault_lines
    )
    return 0 if as_designed else 1


def _run_demo(layout: Layout, args: argparse.Namespace) -> int:
    """``python -m tessera_demo demo``: run the rows, print the table, restore the stack."""
    faults = bool(args.faults) or bool(args.faults_only)
    stores: tuple[str, ...] = args.fault_stores or ("single", "sentinel", "cluster")
    options = DemoOptions(
        rows=() if args.faults_only else tuple(args.rows),
        users=args.users,
        rounds=args.rounds,
        policy=args.policy,
        one_network=bool(args.one_network),
        fault_stores=stores if faults else (),
    )
    if not 1 <= options.users <= 254 or not 1 <= options.rounds <= 100:
        print("error: --users must be 1-254 and --rounds 1-100", file=sys.stderr)
        return 2
    if options.policy is not None:
        for number in options.rows:
            if problem := policy_problem(ROWS[number], options.policy):
                print(f"error: {problem}", file=sys.stderr)
                return 2
    control = StackControl(layout.root)
    try:
        return asyncio.run(_demo(control, options))
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# -- outage-probe -------------------------------------------------------------------


def _outage_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``outage-probe`` command's options."""
    parser.add_argument(
        "--how",
        choices=(*outage.HOW, "both"),
        default="both",
        help=(
            "stop: SIGSTOP, then SIGCONT; kill: SIGKILL, then `up`; both (the default; "
            "a Sentinel or Cluster primary is only killed, and fails over)"
        ),
    )
    parser.add_argument(
        "--slot",
        choices=SLOTS,
        default="rev",
        help=(
            "Cluster: kill the primary of the revocation plane's slot {rev} (the default), "
            "or one that serves only other keys (sessions)"
        ),
    )
    _number_option(
        parser,
        "--revoked",
        int,
        outage.DEFAULT_REVOKED,
        "users presenting credentials logged out before",
    )
    _number_option(
        parser,
        "--churners",
        int,
        outage.DEFAULT_CHURNERS,
        "users logging in and out through the fault",
    )
    _number_option(parser, "--users", int, outage.DEFAULT_USERS, "streaming users")
    _number_option(
        parser, "--hold", float, outage.DEFAULT_HOLD, "seconds Redis stays away, at least"
    )
    _number_option(
        parser,
        "--max-hold",
        float,
        outage.DEFAULT_MAX_HOLD,
        "seconds after which Redis comes back even if no client was refused yet",
    )


def _run_outage_probe(layout: Layout, args: argparse.Namespace) -> int:
    """``python -m tessera_demo outage-probe``: print the figures of each outage."""
    how: str = args.how
    users: int = args.users
    hold: float = args.hold
    max_hold: float = args.max_hold
    revoked: int = args.revoked
    churners: int = args.churners
    if not 1 <= users <= 64 or not 0 <= hold <= max_hold <= 300:
        print("error: --users must be 1-64, and 0 <= --hold <= --max-hold <= 300", flush=True)
        return 2
    if not 0 <= revoked <= 32 or not 0 <= churners <= 32:
        print("error: --revoked and --churners must be 0-32", flush=True)
        return 2
    control = StackControl(layout.root)
    group = control.state().redis_topology not in ("", "single")
    kinds: Sequence[str] = outage.HOW if how == "both" else (how,)
    if group and how == "both":
        kinds = ("kill",)
    print("this takes the stack's Redis away and brings it back; clients see 503s meanwhile")
    for kind in kinds:
        try:
            report = asyncio.run(
                outage.probe_redis_outage(
                    control,
                    how=kind,
                    slot=args.slot,
                    users=users,
                    hold=hold,
                    max_hold=max_hold,
                    revoked=revoked,
                    churners=churners,
                )
            )
        except (StackError, RuntimeError) as exc:
            print(f"error: {exc}", flush=True)
            return 1
        print(report.format(), flush=True)
        if report.revoked_accepted:
            print(f"error: {report.revoked_accepted} revoked credentials accepted:", flush=True)
            print("\n".join(f"  {line}" for line in report.accepted_details()), flush=True)
            return 1
    return 0


# -- the command line ---------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tessera_demo",
        description="Drive tessera's running local stack: the demonstration and the outage probe.",
    )
    add_run_dir_option(parser, "the stack's run directory (default ./.run)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="walk the demonstration rows and print a table")
    _demo_arguments(demo)
    probe = commands.add_parser(
        "outage-probe",
        help="take the stack's Redis away under a stream of GETs, bring it back, print figures",
    )
    _outage_arguments(probe)
    return parser


#: Each command's function.
COMMANDS: dict[str, Command] = {
    "demo": _run_demo,
    "outage-probe": _run_outage_probe,
}


def main(argv: list[str] | None = None) -> int:
    """Run the demo CLI; returns the process exit status."""
    return run_command(_parser(), COMMANDS, argv)
