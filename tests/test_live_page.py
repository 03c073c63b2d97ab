"""The live load-balancer page's own app (``tessera_stack.live_page``): the page under a
CSP with nothing inline, the stack as ``state.json`` records it, and the operator
controls behind the operator secret, one at a time, each the stack's own command.

The app runs on a real run directory (``Layout``) in ``tmp_path``; the one command
that really runs is ``python -m tessera_stack ... row 4`` against a stack that is not
running, which fails fast without starting anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tessera_stack import live_page
from tessera_stack.processes import StackError
from tessera_stack.rows import ROWS
from tessera_stack.state import Layout, ReplicaEntry, StackState
from tessera_verify.errors import PROBLEM_JSON

Client = TestClient[Any, Any]
ClientFactory = Callable[..., Awaitable[Client]]

SECRET = secrets.token_urlsafe(32)
OPERATOR = {live_page.SECRET_HEADER: SECRET}
REPLICAS = [ReplicaEntry("r1", 18081), ReplicaEntry("r2", 18082)]
#: How long a real stack command may take to fail (it starts nothing; a slow CI box).
COMMAND_DEADLINE = 60.0


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """A run directory whose state.json says: row 4, round-robin, two replicas, an
    external Redis; no process of the stack runs."""
    layout = Layout(tmp_path / "run")
    layout.create()
    StackState(row=4, policy="round_robin", redis="external", replicas=list(REPLICAS)).save(layout)
    return layout


@pytest.fixture
async def client(aiohttp_client: ClientFactory, layout: Layout) -> Client:
    return await aiohttp_client(live_page.create_app(layout, SECRET))


async def _problem(response: ClientResponse, status: int, code: str) -> dict[str, Any]:
    """Assert ``response`` is an RFC 9457 problem with ``status`` and ``code``."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == PROBLEM_JSON, text
    body: dict[str, Any] = json.loads(text)
    assert body["status"] == status and body["error"] == code, body
    return body


async def _nothing_started(client: Client) -> None:
    response = await client.get("/live/actions/latest", headers=OPERATOR)
    await _problem(response, 404, "not_found")


async def _latest_when_finished(
    client: Client, deadline: float = COMMAND_DEADLINE
) -> dict[str, Any]:
    """Poll ``/live/actions/latest`` until the control is no longer running."""
    deadline += time.monotonic()
    while True:
        response = await client.get("/live/actions/latest", headers=OPERATOR)
        assert response.status == 200, await response.text()
        latest: dict[str, Any] = await response.json()
        if latest["status"] != "running":
            return latest
        assert time.monotonic() < deadline, f"the control is still running: {latest}"
        await asyncio.sleep(0.05)


# -- the page ----------------------------------------------------------------------------


def _csp(header: str) -> dict[str, str]:
    directives = (part.strip().split(None, 1) for part in header.split(";") if part.strip())
    return {name: value for name, value in directives}


async def test_the_page_is_served_under_a_csp_that_allows_nothing_inline_and_no_framing(
    client: Client,
) -> None:
    response = await client.get("/live/")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert await response.read() == (live_page.STATIC / "index.html").read_bytes()
    csp = response.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    directives = _csp(csp)
    assert directives["frame-ancestors"] == "'none'"
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == directives["style-src"] == "'self'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_page_has_no_inline_code_its_csp_would_block() -> None:
    """The CSP allows this origin's files only: an inline script, style or handler
    in the page would silently not run."""
    html = (live_page.STATIC / "index.html").read_text(encoding="utf-8")
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/live/live.js" defer>']
    assert "<style" not in html
    assert not re.search(r"\sstyle\s*=", html)
    assert not re.search(r"\son[a-z]+\s*=", html)
    assert not re.search(r"javascript:", html, re.IGNORECASE)


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("live.js", "text/javascript; charset=utf-8"), ("live.css", "text/css; charset=utf-8")],
)
async def test_the_pages_script_and_stylesheet_are_served_with_their_types(
    client: Client, name: str, content_type: str
) -> None:
    response = await client.get(f"/live/{name}")
    assert response.status == 200
    assert response.headers["Content-Type"] == content_type
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" in response.headers
    assert await response.read() == (live_page.STATIC / name).read_bytes()


async def test_a_file_that_is_not_the_pages_own_is_a_404_problem(client: Client) -> None:
    for path in ("/live/index.html", "/live/../state.json", "/live/live_page.py"):
        await _problem(await client.get(path), 404, "not_found")


# -- the state ---------------------------------------------------------------------------


async def test_the_state_describes_the_row_its_login_and_the_replicas_none_alive(
    client: Client,
) -> None:
    response = await client.get("/live/state")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    row = ROWS[4]
    assert await response.json() == {
        "row": {
            "number": 4,
            "label": row.label,
            "methods": row.methods,
            "login": "session",
            "expectation": row.expectation,
        },
        "policy": "round_robin",
        "replicas": [{"id": "r1", "alive": False}, {"id": "r2", "alive": False}],
        "redis": "external",
        "rows": [{"number": r.number, "label": r.label} for r in ROWS.values()],
    }


@pytest.fixture
def stand_in_replica(layout: Layout) -> Iterator[None]:
    """A process whose command line names the replica program, recorded as r1's; r2's
    pid file names a live process that is not a replica (a pid reused since)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "tessera_resource"],
        stdin=subprocess.DEVNULL,
    )
    try:
        layout.pid(REPLICAS[0].process).write_text(f"{proc.pid}\n", encoding="ascii")
        layout.pid(REPLICAS[1].process).write_text(f"{os.getpid()}\n", encoding="ascii")
        yield
    finally:
        proc.kill()
        proc.wait()


async def test_a_replica_is_alive_only_when_its_pid_runs_the_replica_program(
    client: Client, stand_in_replica: None
) -> None:
    described = await (await client.get("/live/state")).json()
    assert described["replicas"] == [{"id": "r1", "alive": True}, {"id": "r2", "alive": False}]


async def test_the_state_follows_state_json_methods_and_a_stopped_own_redis(
    client: Client, layout: Layout
) -> None:
    StackState(
        row=4,
        policy="least_conn",
        methods="shared_session,jwt",
        redis="managed",
        redis_topology="single",
        redis_port=6399,
        replicas=[REPLICAS[0]],
    ).save(layout)
    described = await (await client.get("/live/state")).json()
    assert described["policy"] == "least_conn"
    assert described["row"]["methods"] == "shared_session,jwt"
    assert described["replicas"] == [{"id": "r1", "alive": False}]
    assert described["redis"] == "stopped"


async def test_a_run_directory_without_state_shows_no_row_and_no_replicas(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    empty = Layout(tmp_path / "empty")
    empty.create()
    client = await aiohttp_client(live_page.create_app(empty, SECRET))
    described = await (await client.get("/live/state")).json()
    assert described["row"] is None
    assert described["replicas"] == []
    assert described["redis"] == "external"


# -- the operator secret -----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {live_page.SECRET_HEADER: ""},
        {live_page.SECRET_HEADER: SECRET[:-1]},
        {live_page.SECRET_HEADER: SECRET + "x"},
        {live_page.SECRET_HEADER: f"{SECRET}, {SECRET}"},
        {live_page.SECRET_HEADER: "x" * len(SECRET)},
        # Not the header the controls read: nginx's check reads Authorization as a user's.
        {"Authorization": f"Bearer {SECRET}"},
    ],
    ids=["none", "empty", "shorter", "longer", "twice", "other", "in-authorization"],
)
async def test_every_control_needs_the_operator_secret(
    client: Client, headers: dict[str, str]
) -> None:
    for action in (*live_page.ACTIONS, "no-such-control"):
        body = {"row": 4} if action == "row" else {"replica": "r1"}
        response = await client.post(f"/live/actions/{action}", json=body, headers=headers)
        await _problem(response, 403, "operator_secret_required")
    response = await client.get("/live/actions/latest", headers=headers)
    await _problem(response, 403, "operator_secret_required")
    await _nothing_started(client)


async def test_a_secret_header_that_is_not_utf8_is_refused_like_a_wrong_one(
    client: Client,
) -> None:
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(
            b"GET /live/actions/latest HTTP/1.1\r\nHost: live\r\n"
            b"X-Operator-Secret: \xff\xfe\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        head = (await reader.read()).split(b"\r\n", 1)[0]
    finally:
        writer.close()
        await writer.wait_closed()
    assert head == b"HTTP/1.1 403 Forbidden"


# -- bodies ------------------------------------------------------------------------------


async def test_an_unknown_control_is_a_404_problem(client: Client) -> None:
    response = await client.post("/live/actions/scale", json={}, headers=OPERATOR)
    body = await _problem(response, 404, "not_found")
    assert all(action in body["detail"] for action in live_page.ACTIONS)


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("row", {"row": 0}),
        ("row", {"row": 7}),
        ("row", {"row": "4"}),
        ("row", {"row": True}),
        ("row", {"row": 4.0}),
        ("row", {}),
        ("row", {"row": 4, "policy": "ip_hash"}),
        ("kill-replica", {"replica": "../x"}),
        ("kill-replica", {"replica": "r1; kill-redis"}),
        ("kill-replica", {"replica": "r1\n"}),
        ("kill-replica", {"replica": 1}),
        ("kill-replica", {}),
        ("add-replica", {"count": 2}),
        ("up", {"row": 4}),
    ],
)
async def test_a_control_with_a_bad_body_is_a_400_and_starts_nothing(
    client: Client, action: str, body: dict[str, Any]
) -> None:
    response = await client.post(f"/live/actions/{action}", json=body, headers=OPERATOR)
    await _problem(response, 400, "invalid_request")
    await _nothing_started(client)


async def test_a_control_with_malformed_json_is_a_400(client: Client) -> None:
    response = await client.post(
        "/live/actions/row",
        data=b'{"row": 4',
        headers={**OPERATOR, "Content-Type": "application/json"},
    )
    await _problem(response, 400, "malformed_json")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_a_control_with_a_body_that_is_not_json_is_a_415(
    client: Client, content_type: str
) -> None:
    response = await client.post(
        "/live/actions/row", data=b"row=4", headers={**OPERATOR, "Content-Type": content_type}
    )
    await _problem(response, 415, "unsupported_media_type")
    await _nothing_started(client)


# -- running a control -------------------------------------------------------------------


async def test_latest_is_a_404_before_any_control(client: Client) -> None:
    response = await client.get("/live/actions/latest", headers=OPERATOR)
    await _problem(response, 404, "not_found")


async def test_a_row_switch_runs_the_stack_command_and_reports_its_failure(
    client: Client,
) -> None:
    """The stack is not running: the command says so and exits non-zero; the control
    answered 202 at once and reports that afterwards."""
    response = await client.post("/live/actions/row", json={"row": 4}, headers=OPERATOR)
    assert response.status == 202, await response.text()
    assert response.headers["Location"] == "/live/actions/latest"
    assert response.headers["Cache-Control"] == "no-store"
    started = await response.json()
    assert started == {
        "number": 1,
        "action": "row",
        "command": "row 4",
        "status": "running",
        "exit_status": None,
        "output": "",
    }

    latest = await _latest_when_finished(client)
    assert latest["number"] == 1 and latest["command"] == "row 4"
    assert latest["status"] == "failed"
    assert isinstance(latest["exit_status"], int) and latest["exit_status"] != 0
    assert "not running" in latest["output"]


@pytest.fixture
def gated_command(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[asyncio.Event, list[Any]]]:
    """Stack commands that run until the test releases them: (release, commands run)."""
    release = asyncio.Event()
    ran: list[Any] = []

    async def run(layout: Layout, args: list[str]) -> tuple[int, str]:
        ran.append((layout, args))
        await release.wait()
        return 0, f"ran {' '.join(args)}"

    monkeypatch.setattr(live_page, "run_stack_command", run)
    yield release, ran
    # The app waits for a running command on shutdown: never leave one blocked.
    release.set()


async def test_one_control_at_a_time_the_next_is_a_409_until_it_is_done(
    client: Client, layout: Layout, gated_command: tuple[asyncio.Event, list[Any]]
) -> None:
    release, ran = gated_command
    first = await client.post("/live/actions/row", json={"row": 4}, headers=OPERATOR)
    assert first.status == 202, await first.text()

    for action, body in (("kill-redis", {}), ("row", {"row": 5}), ("up", {})):
        response = await client.post(f"/live/actions/{action}", json=body, headers=OPERATOR)
        await _problem(response, 409, "action_running")
    latest = await (await client.get("/live/actions/latest", headers=OPERATOR)).json()
    assert (latest["number"], latest["command"], latest["status"]) == (1, "row 4", "running")

    release.set()
    latest = await _latest_when_finished(client)
    assert latest == {
        "number": 1,
        "action": "row",
        "command": "row 4",
        "status": "done",
        "exit_status": 0,
        "output": "ran row 4",
    }
    second = await client.post(
        "/live/actions/kill-replica", json={"replica": "r2"}, headers=OPERATOR
    )
    assert second.status == 202, await second.text()
    assert (await second.json())["number"] == 2
    await _latest_when_finished(client)
    assert ran == [(layout, ["row", "4"]), (layout, ["kill-replica", "r2"])]


@pytest.mark.parametrize(
    ("action", "body", "args"),
    [
        ("row", {"row": 1}, ["row", "1"]),
        ("kill-replica", {"replica": "r12"}, ["kill-replica", "r12"]),
        ("add-replica", {}, ["add-replica"]),
        ("kill-redis", {}, ["kill-redis"]),
        ("up", {}, ["up"]),
    ],
)
async def test_each_control_runs_the_stack_command_of_its_name(
    client: Client,
    gated_command: tuple[asyncio.Event, list[Any]],
    action: str,
    body: dict[str, Any],
    args: list[str],
) -> None:
    release, ran = gated_command
    release.set()
    response = await client.post(f"/live/actions/{action}", json=body, headers=OPERATOR)
    assert response.status == 202, await response.text()
    assert (await _latest_when_finished(client))["status"] == "done"
    assert [command for _, command in ran] == [args]


async def test_a_command_that_cannot_start_fails_and_frees_the_controls(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def cannot_start(layout: Layout, args: list[str]) -> tuple[int, str]:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(live_page, "run_stack_command", cannot_start)
    response = await client.post("/live/actions/up", json={}, headers=OPERATOR)
    assert response.status == 202, await response.text()
    latest = await _latest_when_finished(client, deadline=5.0)
    assert latest["status"] == "failed"
    response = await client.post("/live/actions/up", json={}, headers=OPERATOR)
    assert response.status == 202, await response.text()


# -- the process -------------------------------------------------------------------------


def test_a_short_operator_secret_is_refused(layout: Layout) -> None:
    with pytest.raises(StackError, match="at least 32"):
        live_page.create_app(layout, "x" * 31)


@pytest.mark.parametrize("argv", [[], ["run"], ["serve", "--port", "1"]])
def test_main_without_serve_prints_its_usage_and_exits_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert live_page.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.fixture
def live_env(monkeypatch: pytest.MonkeyPatch, layout: Layout) -> pytest.MonkeyPatch:
    monkeypatch.setenv(live_page.PORT_ENV, "18099")
    monkeypatch.setenv(live_page.RUN_DIR_ENV, str(layout.root))
    return monkeypatch


@pytest.mark.parametrize("missing", [live_page.PORT_ENV, live_page.RUN_DIR_ENV])
def test_serve_without_its_environment_exits_2(
    live_env: pytest.MonkeyPatch, missing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    live_env.delenv(missing)
    assert live_page.main(["serve"]) == 2
    assert missing in capsys.readouterr().err


def test_serve_without_a_usable_secret_or_port_exits_2(
    live_env: pytest.MonkeyPatch, layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_file = layout.secret(live_page.OPERATOR_SECRET)
    assert live_page.main(["serve"]) == 2  # no secret file yet
    secret_file.write_text("too short\n", encoding="ascii")
    assert live_page.main(["serve"]) == 2
    secret_file.write_text(SECRET + "\n", encoding="ascii")
    live_env.setenv(live_page.PORT_ENV, "eighty")
    assert live_page.main(["serve"]) == 2
    assert capsys.readouterr().err.count("cannot start the live page") == 3
