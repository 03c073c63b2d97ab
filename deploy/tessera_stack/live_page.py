"""The live load-balancer page and its operator controls (the local stack only).

``up`` runs this as the stack's ``live`` process, on 127.0.0.1, and nginx
serves it at ``/live/`` behind the login portal (``nginx/live_page.conf``:
the same ``auth_request`` check as ``/app/``). The page (``live_static/``)
sends ``GET /api/me`` at a steady rate with the credential the current row's
replicas accept and shows, live, which replica answered each request and
whether it was authenticated (see ``live_static/live.js``).

What it serves:

- ``GET /live/`` and its script and stylesheet: the page. Its CSP allows
  scripts and styles from this origin only (nothing inline) and no framing.
- ``GET /live/state``: the stack as ``state.json`` records it (row, policy,
  replicas) and which of its processes are alive, for the page to show and
  to know how this row logs in.
- ``POST /live/actions/{action}``: the operator controls (switch row, kill a
  replica, add one, kill the shared Redis, ``up`` to bring back what was
  killed). Each runs the stack's own command (``python -m tessera_stack
  --run-dir ... row 4``), one at a time, in a process of its own (the
  replicas it starts are not this process's children), and answers 202 at
  once: the page stays live while the stack changes, and ``GET
  /live/actions/latest`` says how the command went, with its output. Both
  need the operator secret in ``X-Operator-Secret``
  (``.run/secrets/operator_secret``, made by ``up``, 0600).

The controls exist only here: in compose and Kubernetes there is no such
process and nginx has no ``/live/`` (a 404).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tessera_platform.jsonbody import read_body
from tessera_platform.serve import serve
from tessera_stack import services, stack_redis
from tessera_stack.processes import StackError
from tessera_stack.rows import ROWS
from tessera_stack.state import OPERATOR_SECRET, Layout, StackState
from tessera_verify.error_middleware import error_middleware_for
from tessera_verify.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    TesseraError,
)

__all__ = ["LIVE", "LIVE_PROGRAM", "OPERATOR_SECRET", "create_app", "main"]

log = logging.getLogger(__name__)

#: The process's name in the stack (``pids/live.pid``, ``logs/live.log``).
LIVE = "live"
LIVE_PROGRAM = "tessera_stack.live_page"
#: The header that carries it: not Authorization, which nginx's auth_request check (and
#: the replicas) read as the user's credential.
SECRET_HEADER = "X-Operator-Secret"  # noqa: S105 - a header name
PORT_ENV = "TESSERA_LIVE_PORT"
RUN_DIR_ENV = "TESSERA_LIVE_RUN_DIR"
#: A row switch restarts every replica; ``up`` may restart Redis and wait for the services.
ACTION_TIMEOUT = 180.0
OUTPUT_LINES = 30
#: The commands' output, in the stack's logs (``./tessera logs live-actions``).
ACTIONS_LOG = "live-actions"
#: How long a stopped command's group has after SIGTERM, before SIGKILL (``down``
#: gives this process 10 s in all).
STOP_GRACE = 4.0
STATIC = Path(__file__).with_name("live_static")
PAGE_FILES = {
    "": ("index.html", "text/html"),
    "live.js": ("live.js", "text/javascript"),
    "live.css": ("live.css", "text/css"),
}
#: Nothing but this origin's own files, and no framing (the page has no inline code).
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: The controls, each the stack command of the same name.
ACTIONS = ("row", "kill-replica", "add-replica", "kill-redis", "up")
_REPLICA_ID = re.compile(r"^r[0-9]{1,4}$")

LAYOUT = web.AppKey("layout", Layout)
SECRET = web.AppKey("secret", str)


@dataclass
class ActionRun:
    """The latest control: what it runs and, once it is done, how that went."""

    number: int
    action: str
    command: str
    status: str = "running"  # running | done | failed
    exit_status: int | None = None
    output: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Controls:
    """The controls' record, made once with the app (a started app's state is frozen):
    the latest control (None before the first) and the task running it."""

    latest: ActionRun | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


CONTROLS = web.AppKey("controls", Controls)


class OperatorSecretRequired(Forbidden):
    """A logged-in person (nginx checked) who is not the stack's operator."""

    code = "operator_secret_required"
    default_message = f"the operator controls need the operator secret ({SECRET_HEADER})"


class ActionFailed(Conflict):
    code = "action_failed"
    default_message = "the stack command failed"


class ActionBusy(Conflict):
    code = "action_running"
    default_message = "another control is still running; try again when it is done"


class ActionTimeout(TesseraError):
    status = 504
    code = "action_timeout"
    default_message = f"the stack command did not finish within {ACTION_TIMEOUT:g} s"


# -- the page -------------------------------------------------------------------------


def _page_file(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of one of the page's files, read once, when the app is made."""
    filename, content_type = PAGE_FILES[name]
    body = (STATIC / filename).read_bytes()

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=body,
            content_type=content_type,
            charset="utf-8",
            headers={
                "Content-Security-Policy": PAGE_CSP,
                "Referrer-Policy": "same-origin",
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private, no-cache",
            },
        )

    return handler


def _redis_liveness(layout: Layout, state: StackState) -> str:
    """``external``, or whether every process of the stack's own Redis runs."""
    if state.redis != "managed":
        return "external"
    topology = state.redis_topology or "single"
    if topology in stack_redis.GROUPS:
        group = stack_redis.RedisGroup.load(layout, topology)
        pids = [pid for _, pid, _ in group.pids(layout)] if group else [None]
        return "running" if all(pids) else "degraded"
    return "running" if layout.redis(state.redis_port).running else "stopped"


def describe(layout: Layout) -> dict[str, Any]:
    """What the page shows of the stack: its row, policy, replicas and what is alive."""
    state = StackState.load(layout)
    row = ROWS.get(state.row) if state.row is not None else None
    return {
        "row": None
        if row is None
        else {
            "number": row.number,
            "label": row.label,
            "methods": state.methods or row.methods,
            "login": row.login,
            "expectation": row.expectation,
        },
        "policy": state.policy,
        "replicas": [
            {"id": entry.id, "alive": services.replica_pid(layout, entry) is not None}
            for entry in state.replicas
        ],
        "redis": _redis_liveness(layout, state),
        "rows": [{"number": r.number, "label": r.label} for r in ROWS.values()],
    }


async def state_handler(request: web.Request) -> web.Response:
    layout = request.app[LAYOUT]
    described = await asyncio.to_thread(describe, layout)
    return web.json_response(described, headers={"Cache-Control": "no-store"})


# -- the controls -----------------------------------------------------------------------


def _check_secret(request: web.Request) -> None:
    given = request.headers.get(SECRET_HEADER, "").strip()
    # aiohttp keeps bytes that are not UTF-8 as surrogates: encode them back, never fail.
    if not hmac.compare_digest(
        given.encode(errors="surrogateescape"), request.app[SECRET].encode()
    ):
        raise OperatorSecretRequired()


async def _command(request: web.Request, action: str) -> list[str]:
    """The stack command an action runs (its body checked)."""
    if action == "row":
        body = await read_body(request, fields=("row",))
        number = body.get("row")
        if not isinstance(number, int) or isinstance(number, bool) or number not in ROWS:
            raise InvalidRequest(f"'row' must be a row number, {min(ROWS)}-{max(ROWS)}")
        return ["row", str(number)]
    if action == "kill-replica":
        body = await read_body(request, fields=("replica",))
        replica = body.get("replica")
        if not isinstance(replica, str) or not _REPLICA_ID.fullmatch(replica):
            raise InvalidRequest("'replica' must be a replica id such as r2")
        return ["kill-replica", replica]
    if action in ("add-replica", "kill-redis", "up"):
        await read_body(request, fields=())
        return [action]
    raise NotFound(f"no control {action!r}; there are: {', '.join(ACTIONS)}")


async def run_stack_command(layout: Layout, args: list[str]) -> tuple[int, str]:
    """``python -m tessera_stack --run-dir ... ARGS`` in a session of its own: its exit
    status and the end of its output.

    The output goes to ``logs/live-actions.log``, not to a pipe: the command never
    dies of a closed pipe should this process go first. Cancelled (this process
    stopping, ``down`` among others), it stops the command's whole process group,
    so that nothing it started races ``down``.
    """
    log_path = layout.log(ACTIONS_LOG)
    with log_path.open("ab") as output:
        output.write(f"\n--- {' '.join(args)}\n".encode())
        output.flush()
        start = output.tell()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tessera_stack",
            "--run-dir",
            str(layout.root),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        await asyncio.wait_for(proc.wait(), ACTION_TIMEOUT)
    except TimeoutError:
        await _stop_group(proc)
        raise ActionTimeout() from None
    except asyncio.CancelledError:
        await _stop_group(proc)
        raise
    with log_path.open("rb") as written:
        written.seek(start)
        lines = written.read().decode(errors="replace").strip().splitlines()
    assert proc.returncode is not None
    return proc.returncode, "\n".join(lines[-OUTPUT_LINES:])


async def _stop_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the command's process group (its session), SIGKILL what outlives a grace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), STOP_GRACE)
            return
        except TimeoutError:
            continue


async def _run(layout: Layout, run: ActionRun, args: list[str]) -> None:
    try:
        run.exit_status, run.output = await run_stack_command(layout, args)
        run.status = "done" if run.exit_status == 0 else "failed"
    except ActionTimeout as exc:
        run.status, run.output = "failed", exc.message
    except Exception as exc:  # it could not even start: never leave it "running" (a 409 forever)
        log.exception("operator control #%d %s could not run", run.number, run.command)
        run.status, run.output = "failed", f"the command could not run: {exc}"
    log.info("operator control #%d %s: %s", run.number, run.command, run.status)


async def action_handler(request: web.Request) -> web.Response:
    """Start a control; 202 at once (the page stays live meanwhile), 409 while another runs."""
    _check_secret(request)
    action = request.match_info["action"]
    args = await _command(request, action)
    controls = request.app[CONTROLS]
    previous = controls.latest
    if previous is not None and previous.status == "running":
        raise ActionBusy()
    run = ActionRun(
        number=1 if previous is None else previous.number + 1,
        action=action,
        command=" ".join(args),
    )
    controls.latest = run
    log.info("operator control #%d: %s", run.number, run.command)
    controls.tasks.add(task := asyncio.create_task(_run(request.app[LAYOUT], run, args)))
    task.add_done_callback(controls.tasks.discard)
    return web.json_response(
        run.as_json(),
        status=202,
        headers={"Cache-Control": "no-store", "Location": "/live/actions/latest"},
    )


async def latest_handler(request: web.Request) -> web.Response:
    """The latest control and how it went (404 before the first)."""
    _check_secret(request)
    run = request.app[CONTROLS].latest
    if run is None:
        raise NotFound("no control has run yet")
    return web.json_response(run.as_json(), headers={"Cache-Control": "no-store"})


async def _stop_tasks(app: web.Application) -> None:
    """On shutdown (``down`` stops this process first): stop a running command, whose
    replicas or nginx would otherwise come up after ``down`` has stopped them."""
    tasks = app[CONTROLS].tasks
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def readyz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


def create_app(layout: Layout, secret: str) -> web.Application:
    """The page and the controls for the stack in ``layout``, guarded by ``secret``."""
    if len(secret) < 32:
        raise StackError("the operator secret must be at least 32 characters")
    app = web.Application(client_max_size=4096, middlewares=[error_middleware_for(())])
    app[LAYOUT] = layout
    app[SECRET] = secret
    app[CONTROLS] = Controls()
    app.on_shutdown.append(_stop_tasks)
    for name in PAGE_FILES:
        app.router.add_get(f"/live/{name}", _page_file(name))
    app.router.add_get("/live/state", state_handler)
    app.router.add_get("/live/actions/latest", latest_handler)
    app.router.add_post("/live/actions/{action}", action_handler)
    app.router.add_get("/readyz", readyz)
    return app


def main(argv: list[str] | None = None) -> int:
    """``python -m tessera_stack.live_page serve``, configured by its environment."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["serve"]:
        print(f"usage: python -m {LIVE_PROGRAM} serve", file=sys.stderr)
        return 2
    try:
        port = int(os.environ[PORT_ENV])
        layout = Layout(Path(os.environ[RUN_DIR_ENV]))
        secret = layout.secret(OPERATOR_SECRET).read_text(encoding="ascii").strip()
        app = create_app(layout, secret)
    except (KeyError, ValueError, OSError, StackError) as exc:
        print(f"error: cannot start the live page: {exc!r}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s live %(levelname)s %(message)s")
    asyncio.run(serve(app, "127.0.0.1", port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
