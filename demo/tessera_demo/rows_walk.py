"""The load-balancer demonstration: each row of DESIGN.md's table, measured.

For one row the driver switches the running stack to it (``tessera_stack
row N``: the replicas restart, nginx reloads), then:

1. logs in K simulated users, each from its own loopback address;
2. *before*: each user sends a burst of authenticated requests
   (``GET /api/me``, ``GET /api/comments``, ``POST /api/comments``);
3. *kill*: while every user keeps sending ``GET`` requests, one replica is
   SIGKILLed (``tessera_stack kill-replica``; nginx is not told);
4. *after*: each user sends another full burst.

It records, per user, which replica answered (``X-Served-By``) and whether
the answer was an authenticated 2xx (``X-Auth-Method`` not ``none``). A
user is *lost* when it had a successful request before the kill and has
none after it; an *error* is a 5xx or a failed connection. Request counts
and timeouts are bounded and all traffic stays on loopback.

Used by ``python -m tessera_demo demo`` (``make demo``) and by the tests,
which assert on :class:`RowReport` directly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import ssl
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tessera_stack.nginx_conf import POLICIES
from tessera_stack.rows import ROWS, Row, policy_problem
from tessera_stack.services import AUTH_PROGRAM, running_pid
from tessera_stack.state import AUTH, Layout, StackState

__all__ = [
    "DemoOptions",
    "DemoUser",
    "Exchange",
    "Phase",
    "RowReport",
    "StackControl",
    "add_arguments",
    "demo_users",
    "format_table",
    "login",
    "register",
    "run_from_cli",
    "run_row",
    "source_address",
]

DEFAULT_USERS = 12
DEFAULT_ROUNDS = 8
# The GET stream that overlaps the kill stops this many requests per user
# after the kill, and never runs longer than the cap.
AFTER_KILL_GETS = 3
MAX_KILL_PHASE_GETS = 300
REQUEST_TIMEOUT = 10.0
USER_PREFIX = "demo-user-"
# The demo accounts exist only in local stacks; their password is no secret.
PASSWORD = "demo password: correct horse battery staple"  # noqa: S105
NO_METHOD = "none"


def authenticated_ok(status: int | None, auth_method: str | None) -> bool:
    """An authenticated success: a 2xx, and the replica knew who asked."""
    return status is not None and 200 <= status < 300 and auth_method not in (None, NO_METHOD)


def source_address(index: int, *, one_network: bool = False) -> str:
    """The loopback address user ``index`` (0-based) connects from: ``127.0.<index+1>.1``.

    nginx's ``ip_hash`` hashes only the first three octets of an IPv4
    address, so users at 127.0.0.2, 127.0.0.3, ... would all count as one
    client and land on one replica. One /24 per user makes them look like
    users on different networks, as they would on the internet. Linux
    routes all of 127.0.0.0/8 to the loopback interface.

    ``one_network`` puts everyone in 127.0.1.0/24 instead (``127.0.1.<index+1>``):
    users behind one NAT, which ``ip_hash`` sends to a single replica.
    """
    if not 0 <= index < 254:
        raise ValueError("at most 254 demo users")
    return f"127.0.1.{index + 1}" if one_network else f"127.0.{index + 1}.1"


@dataclass(frozen=True)
class Exchange:
    """One request's outcome, as the client saw it."""

    method: str
    path: str
    status: int | None
    served_by: str | None = None
    auth_method: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """An authenticated success: 2xx, and the replica knew who asked."""
        return authenticated_ok(self.status, self.auth_method)

    @property
    def failed(self) -> bool:
        """A server error or no answer at all (as opposed to "who are you?")."""
        return self.status is None or self.status >= 500


@dataclass(frozen=True)
class Phase:
    """Every exchange of one phase, by user."""

    by_user: dict[str, tuple[Exchange, ...]]

    def exchanges(self) -> list[Exchange]:
        return [exchange for log in self.by_user.values() for exchange in log]

    @property
    def total(self) -> int:
        return len(self.exchanges())

    @property
    def ok(self) -> int:
        return sum(1 for exchange in self.exchanges() if exchange.ok)

    @property
    def errors(self) -> int:
        return sum(1 for exchange in self.exchanges() if exchange.failed)

    @property
    def success_rate(self) -> float:
        return self.ok / self.total if self.total else 0.0

    def served_by(self) -> Counter[str]:
        """Responses per replica (any status)."""
        return Counter(e.served_by for e in self.exchanges() if e.served_by is not None)

    def ok_for(self, user: str) -> int:
        return sum(1 for exchange in self.by_user.get(user, ()) if exchange.ok)

    def replicas_for(self, user: str) -> set[str]:
        """The replicas that answered ``user``'s successful requests."""
        return {e.served_by for e in self.by_user.get(user, ()) if e.ok and e.served_by}


@dataclass(frozen=True)
class RowReport:
    """What happened to one row: before, while killing, after."""

    row: Row
    policy: str
    replicas: tuple[str, ...]
    users: tuple[str, ...]
    #: The replica that served each user's login (rows with logins at the
    #: replica), else ``None``.
    homes: dict[str, str | None]
    login_failures: tuple[str, ...]
    before: Phase
    killed: str
    during: Phase
    after: Phase

    @property
    def lost_users(self) -> tuple[str, ...]:
        """Users with a success before the kill and none after it."""
        return tuple(
            user
            for user in self.users
            if self.before.ok_for(user) > 0 and self.after.ok_for(user) == 0
        )

    @property
    def users_of_killed(self) -> tuple[str, ...]:
        """Users whose session lived on the killed replica (replica logins only)."""
        return tuple(user for user in self.users if self.homes.get(user) == self.killed)

    @property
    def errors(self) -> int:
        """5xx answers and failed connections, logins included, in every phase."""
        return (
            len(self.login_failures) + self.before.errors + self.during.errors + self.after.errors
        )

    def unexpected(self) -> list[str]:
        """How this row differs from DESIGN.md's table (empty when it matches)."""
        found: list[str] = []
        number = self.row.number
        if number == 1:
            if self.before.success_rate >= 0.5:
                found.append(f"{self.before.success_rate:.0%} succeeded; most should fail")
            return found
        if self.before.ok != self.before.total:
            found.append(f"only {self.before.ok}/{self.before.total} succeeded before the kill")
        if self.errors:
            found.append(f"{self.errors} errors")
        lost = set(self.lost_users)
        if number in (2, 3):
            expected = set(self.users_of_killed)
            if not expected:
                found.append(f"no user lived on the killed replica {self.killed}")
            if lost != expected:
                found.append(
                    f"lost {sorted(lost)}; expected exactly {self.killed}'s users "
                    f"{sorted(expected)}"
                )
        elif lost or self.after.ok != self.after.total:
            found.append(f"lost {len(lost)} users, {self.after.ok}/{self.after.total} after")
        return found


# -- the stack, through its CLI -------------------------------------------------------


class StackControl:
    """Drive a running stack through ``python -m tessera_stack`` in a subprocess.

    A subprocess rather than a function call: the launcher blocks, and the
    processes it starts must not be children of the (test) process that
    runs the demo.
    """

    def __init__(
        self,
        run_dir: Path,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> None:
        self.layout = Layout(run_dir.absolute())
        self._python = python
        self._env = env  # the launcher's environment (None: this process's)

    async def cli(self, *args: str, timeout: float = 180.0) -> str:
        """Run one launcher command; its output, or RuntimeError with it."""
        proc = await asyncio.create_subprocess_exec(
            self._python,
            "-m",
            "tessera_stack",
            "--run-dir",
            str(self.layout.root),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._env,
        )
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"tessera_stack {' '.join(args)} took over {timeout:g} s") from None
        text = output.decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"tessera_stack {' '.join(args)} failed:\n{text}")
        return text

    def state(self) -> StackState:
        return StackState.load(self.layout)

    def running(self) -> bool:
        state = self.state()
        auth = running_pid(self.layout, AUTH, AUTH_PROGRAM)
        return auth is not None and state.https_port is not None and state.row is not None

    def env(self) -> dict[str, str]:
        """``stack.env`` as a dict."""
        text = self.layout.stack_env.read_text(encoding="utf-8")
        pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
        return {key: value for key, value in pairs}

    @property
    def base_url(self) -> str:
        return self.env()["BASE_URL"]

    @property
    def ca_cert(self) -> Path:
        return Path(self.env()["CA_CERT"])

    async def switch_row(self, number: int, policy: str | None = None) -> None:
        await self.cli("row", str(number), *(("--policy", policy) if policy else ()))

    async def kill_replica(self, replica_id: str) -> None:
        await self.cli("kill-replica", replica_id)


# -- users ------------------------------------------------------------------------


@dataclass
class DemoUser:
    """A simulated user: its own address, cookie jar and (for JWT rows) token."""

    name: str
    source_ip: str
    session: aiohttp.ClientSession
    bearer: str | None = None
    home: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.bearer}"} if self.bearer else {}

    async def request(
        self, base_url: str, method: str, path: str, body: dict[str, Any] | None = None
    ) -> Exchange:
        try:
            async with self.session.request(
                method, base_url + path, json=body, headers=self.headers()
            ) as response:
                await response.read()
                return Exchange(
                    method,
                    path,
                    response.status,
                    response.headers.get("X-Served-By"),
                    response.headers.get("X-Auth-Method"),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Exchange(method, path, None, error=f"{type(exc).__name__}: {exc}")


def _client_ssl(ca_cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_cert))


@contextlib.asynccontextmanager
async def demo_users(
    count: int,
    ca_cert: Path,
    *,
    prefix: str = USER_PREFIX,
    one_network: bool = False,
    addresses: Sequence[str] | None = None,
    connections: int = 4,
) -> AsyncIterator[list[DemoUser]]:
    """``count`` users, each with a client bound to :func:`source_address` (or to
    ``addresses``, in turn) and at most ``connections`` keep-alive connections."""
    context = _client_ssl(ca_cert)
    users: list[DemoUser] = []
    try:
        for index in range(count):
            if addresses:
                address = addresses[index % len(addresses)]
            else:
                address = source_address(index, one_network=one_network)
            connector = aiohttp.TCPConnector(
                ssl=context, local_addr=(address, 0), limit=connections
            )
            session = aiohttp.ClientSession(
                connector=connector,
                # unsafe: the jar otherwise refuses cookies from an IP address host.
                cookie_jar=aiohttp.CookieJar(unsafe=True),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            )
            users.append(DemoUser(f"{prefix}{index + 1:02d}", address, session))
        yield users
    finally:
        for user in users:
            await user.session.close()


async def register(users: Sequence[DemoUser], base_url: str) -> None:
    """Create the demo accounts (an existing one is fine: same fixed password)."""

    async def one(user: DemoUser) -> None:
        async with user.session.post(
            f"{base_url}/auth/register", json={"username": user.name, "password": PASSWORD}
        ) as response:
            if response.status not in (201, 409):
                text = await response.text()
                raise RuntimeError(f"registering {user.name}: {response.status} {text}")

    await asyncio.gather(*(one(user) for user in users))


async def login(user: DemoUser, base_url: str, row: Row) -> Exchange:
    """Log ``user`` in the way ``row``'s replicas expect; returns the exchange."""
    user.session.cookie_jar.clear()
    user.bearer, user.home = None, None
    credentials: dict[str, Any] = {"username": user.name, "password": PASSWORD}
    if row.login == "replica":
        path = "/api/login"
    else:
        path = "/auth/login"
        credentials["credential"] = row.login
    try:
        async with user.session.post(base_url + path, json=credentials) as response:
            payload = await response.json(content_type=None) if response.status == 200 else {}
            served_by = response.headers.get("X-Served-By")
            status = response.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Exchange("POST", path, None, error=f"{type(exc).__name__}: {exc}")
    if row.login == "token" and isinstance(payload, dict):
        token = payload.get("access_token")
        user.bearer = token if isinstance(token, str) else None
    if row.login == "replica":
        user.home = served_by
    # A login is "ok" when it succeeded; the method header is the replica's.
    return Exchange("POST", path, status, served_by, row.login if status == 200 else None)


# -- phases -----------------------------------------------------------------------


def _script(index: int) -> tuple[str, str, dict[str, Any] | None]:
    """The ``index``-th request of a full burst: mostly reads, some writes."""
    step = index % 4
    if step in (0, 3):
        return "GET", "/api/me", None
    if step == 1:
        return "GET", "/api/comments", None
    return "POST", "/api/comments", {"body": f"comment {index}"}


async def _burst(
    users: Sequence[DemoUser], base_url: str, rounds: int, rng: random.Random
) -> Phase:
    """``rounds`` rounds in which every user sends one request, all at once.

    Each round goes out in a fresh shuffled order. Real users do not march
    in step; simulated ones that did would each meet the same replica in
    every round under round-robin (12 users, 3 replicas: request k of
    every round lands on replica k mod 3), and row 1 would look better or
    worse than it is depending on where each user happened to log in.
    """
    logs: dict[str, list[Exchange]] = {user.name: [] for user in users}
    for index in range(rounds):
        method, path, body = _script(index)
        order = list(users)
        rng.shuffle(order)
        results = await asyncio.gather(
            *(user.request(base_url, method, path, body) for user in order)
        )
        for user, exchange in zip(order, results, strict=True):
            logs[user.name].append(exchange)
    return Phase({name: tuple(log) for name, log in logs.items()})


async def _gets_across(
    users: Sequence[DemoUser], base_url: str, event: Callable[[], Awaitable[None]]
) -> Phase:
    """Every user streams GETs while ``event`` runs, and a few more after it.

    Every user has had an answer before ``event`` starts and keeps sending
    while it runs, so the kill lands in the middle of traffic, as a crash
    would.
    """
    started = [asyncio.Event() for _ in users]
    finished = asyncio.Event()

    async def stream(
        user: DemoUser, first_answer: asyncio.Event
    ) -> tuple[str, tuple[Exchange, ...]]:
        log: list[Exchange] = []
        remaining_after = AFTER_KILL_GETS
        while len(log) < MAX_KILL_PHASE_GETS and remaining_after > 0:
            path = "/api/me" if len(log) % 2 == 0 else "/api/comments"
            log.append(await user.request(base_url, "GET", path))
            first_answer.set()
            if finished.is_set():
                remaining_after -= 1
        return user.name, tuple(log)

    failures: list[Exception] = []

    async def trigger() -> None:
        await asyncio.gather(*(flag.wait() for flag in started))
        try:
            await event()
        except Exception as exc:  # re-raised once the streams have ended
            failures.append(exc)
        finally:
            finished.set()

    streams = asyncio.gather(*(stream(u, flag) for u, flag in zip(users, started, strict=True)))
    results, _ = await asyncio.gather(streams, trigger())
    if failures:
        raise failures[0]
    return Phase(dict(results))


def _choose_victim(
    row: Row, replicas: Sequence[str], homes: dict[str, str | None], before: Phase
) -> str:
    """The replica to kill: the one most users live on (replica logins), else the busiest."""
    if row.login == "replica":
        counts = Counter(home for home in homes.values() if home is not None)
    else:
        counts = before.served_by()
    # Most users (or requests) first, then the lowest replica number.
    return min(replicas, key=lambda rid: (-counts.get(rid, 0), int(rid[1:])))


async def run_row(
    control: StackControl,
    number: int,
    *,
    users: int = DEFAULT_USERS,
    rounds: int = DEFAULT_ROUNDS,
    policy: str | None = None,
    one_network: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> RowReport:
    """Switch the stack to row ``number`` and measure it (see the module docstring).

    ``policy`` overrides the row's nginx policy; ``one_network`` puts every
    user in one /24 (see :func:`source_address`).
    """
    row = ROWS[number]
    progress(f"row {number}: switching the stack ({row.methods}, {policy or row.policy})")
    await control.switch_row(number, policy)
    state = control.state()
    replicas = tuple(entry.id for entry in state.replicas)
    base_url = control.base_url
    async with demo_users(users, control.ca_cert, one_network=one_network) as people:
        await register(people, base_url)
        progress(f"row {number}: logging in {users} users")
        logins = await asyncio.gather(*(login(user, base_url, row) for user in people))
        login_failures = tuple(
            user.name for user, login in zip(people, logins, strict=True) if login.status != 200
        )
        homes = {user.name: user.home for user in people}
        progress(f"row {number}: burst of {users}x{rounds} requests")
        # Seeded: the same row shuffles the same way every time. Not for security.
        rng = random.Random(f"tessera-demo-row-{number}")  # noqa: S311
        before = await _burst(people, base_url, rounds, rng)
        victim = _choose_victim(row, replicas, homes, before)
        progress(f"row {number}: killing {victim} under a stream of GETs")
        during = await _gets_across(people, base_url, lambda: control.kill_replica(victim))
        progress(f"row {number}: burst after the kill")
        after = await _burst(people, base_url, rounds, rng)
    return RowReport(
        row=row,
        policy=state.policy,
        replicas=replicas,
        users=tuple(user.name for user in people),
        homes=homes,
        login_failures=login_failures,
        before=before,
        killed=victim,
        during=during,
        after=after,
    )


# -- output -------------------------------------------------------------------------


def _shares(phase: Phase, replicas: Sequence[str]) -> str:
    counts = phase.served_by()
    total = sum(counts.values()) or 1
    return "/".join(f"{round(100 * counts.get(rid, 0) / total)}" for rid in replicas)


def format_table(reports: Sequence[RowReport]) -> str:
    """The compact table ``make demo`` prints: one line per row."""
    replica_sets = {report.replicas for report in reports}
    ids = max(replica_sets, key=len) if replica_sets else ()
    share_header = f"% by {'/'.join(ids)}" if ids else "% by replica"
    header = (
        "row",
        "sessions in / nginx policy",
        "ok before",
        share_header,
        "killed",
        "ok after",
        "users lost",
        "errors",
        "as designed",
    )
    lines: list[tuple[str, ...]] = [header]
    for report in reports:
        unexpected = report.unexpected()
        lines.append(
            (
                str(report.row.number),
                f"{report.row.state} / {report.policy}",
                f"{report.before.success_rate:.0%}",
                _shares(report.before, report.replicas),
                report.killed,
                f"{report.after.success_rate:.0%}",
                f"{len(report.lost_users)} of {len(report.users)}",
                str(report.errors),
                "yes" if not unexpected else "NO: " + "; ".join(unexpected),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    rendered = [
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True))
        + "  "
        + line[-1]
        for line in lines
    ]
    return "\n".join(rendered)


LEGEND = (
    "ok = authenticated 2xx; % by = who answered before the kill; killed = the replica\n"
    "SIGKILLed under a stream of GETs; users lost = had a success before, none after;\n"
    "errors = 5xx or failed connections a user saw (logins and the kill included)."
)


# -- CLI ---------------------------------------------------------------------------


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` subcommand's options."""
    parser.add_argument(
        "--rows", type=_rows_arg, default=list(ROWS), help="which rows, e.g. 1-6 or 2,3"
    )
    parser.add_argument(
        "--users",
        type=int,
        default=DEFAULT_USERS,
        help=f"simulated users (default {DEFAULT_USERS})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"requests per user per burst (default {DEFAULT_ROUNDS})",
    )
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
    users: int = DEFAULT_USERS
    rounds: int = DEFAULT_ROUNDS
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
    reports: list[RowReport] = []

    def progress(message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)

    # Imported here: the fault demo drives the outage probe, which uses this module.
    from tessera_demo import faults as demo_faults

    fault_lines: list[demo_faults.FaultLine] = []
    try:
        for number in options.rows:
            reports.append(
                await run_row(
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
            faults = [f for f in demo_faults.FAULTS if f.topology in options.fault_stores]
            fault_lines = await demo_faults.run_faults(control, faults=faults, progress=progress)
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
        print(format_table(reports))
        print()
        print(LEGEND)
    if fault_lines:
        demo_faults.print_faults(fault_lines)
    as_designed = all(not r.unexpected() for r in reports) and all(
        not line.unexpected() for line in fault_lines
    )
    return 0 if as_designed else 1


def run_from_cli(layout: Layout, args: argparse.Namespace) -> int:
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
