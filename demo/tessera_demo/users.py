"""The demo's simulated users: HTTPS clients of nginx, each from its own loopback address.

Each user has its own ``aiohttp`` session (cookie jar, keep-alive
connections) bound to its own source address, so nginx sees distinct
clients; :func:`login` logs one in the way a row expects (a session cookie,
a bearer token, or a replica's own login). Shared by the rows walk, the
outage probe, the revoked-credential clients, the benchmark and the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tessera_stack.rows import Row

__all__ = [
    "PASSWORD",
    "DemoUser",
    "Exchange",
    "authenticated_ok",
    "demo_users",
    "login",
    "register",
    "source_address",
]

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
