"""The demonstration's second table: rows 4-6 when the shared store fails.

``python -m tessera_demo demo --faults`` (``make demo FAULTS=1``) runs the
outage probe (:mod:`tessera_demo.outage`) for each store and fault:

- one Redis (AOF): SIGKILL, brought back by ``up`` on its port with its data;
- a Sentinel group: SIGKILL of the primary; the sentinels fail over;
- a Cluster: SIGKILL of the primary of the revocation plane's slot
  (``{rev}``), and of a primary that serves only other keys (sessions);

and each of rows 4, 5 and 6, and prints one line per pair: seconds
unavailable, requests failed (of which 502), sessions lost, and revoked
credentials accepted, which must be 0.

The stack the demo runs on serves the topology it has; for the others the
demo starts a stack of its own (``up --redis sentinel|cluster`` in a
directory under the run directory, on free ports, with its own PostgreSQL)
and deletes it after (``down --purge``), whatever happened.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from tessera_demo.outage import OutageReport, probe_redis_outage
from tessera_demo.stack_control import StackControl, own_servers_env, up_on_free_ports
from tessera_demo.tables import align_columns
from tessera_stack.rows import ROWS

__all__ = [
    "FAULTS",
    "FAULTS_LEGEND",
    "FAULT_ROWS",
    "Fault",
    "FaultLine",
    "format_faults",
    "print_faults",
    "run_faults",
]

#: How long a single Redis stays dead, at least (and until a client was refused).
HOLD = 1.0
USERS = 4
REVOKED = 2
CHURNERS = 2
FAULT_ROWS = (4, 5, 6)
OWN_STACKS = "demo-faults"


@dataclass(frozen=True)
class Fault:
    """One way the shared store fails."""

    topology: str  # single | sentinel | cluster
    slot: str  # Cluster: rev | sessions
    label: str


FAULTS = (
    Fault("single", "rev", "one Redis (AOF): SIGKILL, `up`"),
    Fault("sentinel", "rev", "Sentinel: SIGKILL primary"),
    Fault("cluster", "rev", "Cluster: SIGKILL primary of {rev}"),
    Fault("cluster", "sessions", "Cluster: SIGKILL primary of sessions"),
)


@dataclass(frozen=True)
class FaultLine:
    """One line of the table: a fault, a row, what the probe saw."""

    fault: Fault
    report: OutageReport

    def unexpected(self) -> list[str]:
        """Departures from the design: a revoked credential accepted, a 502, a lost user."""
        found: list[str] = []
        report = self.report
        if report.revoked_accepted:
            found.append(f"{report.revoked_accepted} revoked credentials accepted")
        if report.bad_gateway:
            found.append(f"{report.bad_gateway} answered 502")
        if report.other_failures:
            found.append(f"{len(report.other_failures)} failed otherwise than 503")
        if report.users_lost:
            found.append(f"{len(report.users_lost)} users lost")
        return found


@contextlib.asynccontextmanager
async def _stack_for(
    control: StackControl, topology: str, progress: Callable[[str], None]
) -> AsyncIterator[StackControl]:
    """``control``'s stack when it runs its own Redis as ``topology``; else one of the demo's."""
    state = control.state()
    current = state.redis_topology or "single"
    if control.running() and state.redis == "managed" and current == topology:
        yield control
        return
    run_dir = control.layout.root / OWN_STACKS / topology
    own = StackControl(run_dir, env=own_servers_env())
    progress(f"starting a stack of the demo's own with --redis {topology} in {run_dir}")
    try:
        await own.cli(*up_on_free_ports("--redis", topology), timeout=300.0)
        yield own
    finally:
        progress(f"stopping and deleting the demo's {topology} stack")
        try:
            await own.cli("down", "--purge")
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                run_dir.parent.rmdir()  # only when empty


async def run_faults(
    control: StackControl,
    *,
    faults: Sequence[Fault] = FAULTS,
    rows: Sequence[int] = FAULT_ROWS,
    progress: Callable[[str], None] = lambda _: None,
) -> list[FaultLine]:
    """Every fault of ``faults`` on every row of ``rows`` (module doc); restores the row of
    ``control``'s stack when it was used."""
    lines: list[FaultLine] = []
    topologies = list(dict.fromkeys(fault.topology for fault in faults))
    for topology in topologies:
        async with _stack_for(control, topology, progress) as stack:
            original = stack.state().row
            try:
                for number in rows:
                    progress(f"{topology}: row {number}")
                    await stack.switch_row(number)
                    for fault in (f for f in faults if f.topology == topology):
                        progress(f"  {fault.label}")
                        report = await probe_redis_outage(
                            stack,
                            how="kill",
                            slot=fault.slot,
                            users=USERS,
                            hold=HOLD,
                            revoked=REVOKED,
                            churners=CHURNERS,
                        )
                        lines.append(FaultLine(fault, report))
            finally:
                if stack is control and original is not None and original != stack.state().row:
                    await stack.switch_row(original)
    return lines


def format_faults(lines: Sequence[FaultLine]) -> str:
    """The table ``make demo FAULTS=1`` prints: one line per fault and row."""
    header = (
        "shared store / fault",
        "row",
        "unavailable",
        "slowest",
        "requests failed (502)",
        "sessions lost",
        "revoked accepted",
        "as designed",
    )
    table: list[tuple[str, ...]] = [header]
    for line in lines:
        report = line.report
        unexpected = line.unexpected()
        kinds = "+".join(sorted(report.revoked.armed())) if report.revoked else ""
        table.append(
            (
                line.fault.label,
                f"{report.row.number} {ROWS[report.row.number].state}",
                f"{report.unavailable_seconds:.1f} s",
                f"{report.slowest_seconds:.1f} s",
                f"{len(report.failed)} of {len(report.answers)} ({report.bad_gateway})",
                f"{len(report.users_lost)} of {len(report.users)}",
                f"{report.revoked_accepted} of {report.revoked_checks} ({kinds})",
                "yes" if not unexpected else "NO: " + "; ".join(unexpected),
            )
        )
    return align_columns(table)


FAULTS_LEGEND = (
    f"{USERS} users stream GET /api/me through nginx while the store fails. unavailable =\n"
    "from the first failed request to the last one's answer; slowest = the longest one\n"
    "request waited; requests failed = not an authenticated 2xx (each a 503 with the\n"
    "JSON error unless counted as 502); sessions lost = users never served again;\n"
    "revoked accepted = 2xx answers to a session cookie or bearer token presented after\n"
    f"its logout answered, by {REVOKED} users logged out before the fault, {REVOKED} whose "
    "logout\n"
    f"began with it and {CHURNERS} logging in and out throughout, each from its own "
    "127.0.N.1\n"
    "(must be 0; in brackets: what the row accepts while a credential is live)."
)


def print_faults(lines: Sequence[FaultLine]) -> None:
    print("\nThe shared store fails (rows 4-6):\n")
    print(format_faults(lines))
    print()
    print(FAULTS_LEGEND)
    for line in lines:
        for detail in line.report.accepted_details():
            where = f"{line.fault.label}, row {line.report.row.number}"
            print(f"REVOKED CREDENTIAL ACCEPTED ({where}): {detail}")
    sys.stdout.flush()
