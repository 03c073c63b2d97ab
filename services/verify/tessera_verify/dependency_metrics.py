"""Latency of every Redis command and PostgreSQL query, observed without touching call sites.

Every service opens Redis through :func:`instrumented_redis`, which also picks
the topology from the URL's scheme:

- ``redis://[user:password@]host:port[/db]`` and ``rediss://...`` (TLS): one server
  (``unix:///path/to/socket`` too, for a library user: ``REDIS_URL`` takes the others);
- ``redis+sentinel://[user:password@]host:port[,host:port...]/<master-name>[/db]``:
  the primary that the sentinels name, followed across failovers (the
  credentials are the data nodes'; sentinels are reached without any);
- ``redis+cluster://[user:password@]host:port[,host:port...]``: Redis Cluster,
  any reachable node is enough to discover the rest (database 0 only).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from prometheus_client import Histogram
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.maint_notifications import MaintNotificationsConfig

DEPENDENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0)

log = logging.getLogger(__name__)

REDIS_URL_SCHEMES = ("redis", "rediss", "redis+sentinel", "redis+cluster")
#: Connections one client opens to a single Redis (redis-py's default bound).
REDIS_MAX_CONNECTIONS = 100
_DEFAULT_PORTS = {"redis+sentinel": 26379, "redis+cluster": 6379}


def _observe(latency: Histogram | None, args: tuple[Any, ...], started: float) -> None:
    if latency is not None and args:
        command = args[0]
        name = command.decode() if isinstance(command, bytes) else str(command)
        latency.labels("redis", name.split(" ", 1)[0].lower()).observe(
            time.perf_counter() - started
        )


class _CloseSafe(AbstractConnection):
    """A connection whose write fails with :class:`redis.exceptions.ConnectionError`, not
    ``AttributeError``, when another task has closed it meanwhile.

    redis-py 8.1 can close a connection that a command is using: a cluster client,
    after a node's connection fails, disconnects that node's idle connections, and
    one of them may be handed to another command before the disconnect ends, which
    then clears the writer that command has just opened (the same holds for any
    disconnect racing a connect). The command's write then meets ``None`` and
    raises ``AttributeError``, which no caller treats as a lost connection: the
    cluster client does not retry it, and a request answers 500 instead of trying
    again (and 503 if the retries fail). Raised as a lost connection, the command
    is retried like any other the server closed. (redis-py issues #3546, #4287.)

    Every connection opened through :func:`instrumented_redis` has a write
    timeout (``socket_timeout``, which it requires), so every write goes through
    this method.
    """

    async def _send_packed_command(self, command: Iterable[bytes]) -> None:
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            raise RedisConnectionError("connection closed by another task while in use")
        await super()._send_packed_command(command)


class CloseSafeConnection(_CloseSafe, Connection):
    """:class:`_CloseSafe` over TCP (``redis://``, a cluster's nodes)."""


class CloseSafeSSLConnection(_CloseSafe, SSLConnection):
    """:class:`_CloseSafe` over TLS (``rediss://``, a cluster's nodes with ``ssl``)."""


class CloseSafeUnixConnection(_CloseSafe, UnixDomainSocketConnection):
    """:class:`_CloseSafe` over a Unix socket (``unix://``)."""


class CloseSafeSentinelConnection(_CloseSafe, SentinelManagedConnection):
    """:class:`_CloseSafe` to the primary a Sentinel group names."""


#: The close-safe class for each class redis-py picks from a URL.
_CLOSE_SAFE: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: CloseSafeConnection,
    SSLConnection: CloseSafeSSLConnection,
    UnixDomainSocketConnection: CloseSafeUnixConnection,
}


class InstrumentedRedis(Redis):
    """A Redis client that times each command into ``latency`` (set after construction),
    and each pipeline as one ``pipeline`` (a session load is one: GET and PEXPIRETIME).

    Pub/sub has its own path in redis-py and is not timed.
    """

    latency: Histogram | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        started = time.perf_counter()
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        finally:
            _observe(self.latency, args, started)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = InstrumentedPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe.latency = self.latency
        return pipe


class InstrumentedPipeline(Pipeline):
    """A pipeline timed as one round trip, ``pipeline``."""

    latency: Histogram | None = None

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        started = time.perf_counter()
        try:
            return await super().execute(raise_on_error)
        finally:
            _observe(self.latency, ("pipeline",), started)


class SentinelManagedRedis(InstrumentedRedis):
    """The primary of a Sentinel group; closing it also closes its sentinel connections."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


class InstrumentedRedisCluster(RedisCluster):
    """:class:`InstrumentedRedis` for Redis Cluster: a command's time includes its redirects.

    Its connections are :class:`CloseSafeConnection`. redis-py's cluster client takes no
    connection class: it is set on the options every node is made with, and on the
    nodes made already (the startup nodes, which have no connection yet).
    """

    latency: Histogram | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # SSLConnection when made with ssl=True: the close-safe class keeps TLS.
        tls = issubclass(self.connection_kwargs["connection_class"], SSLConnection)
        close_safe = CloseSafeSSLConnection if tls else CloseSafeConnection
        self.connection_kwargs["connection_class"] = close_safe
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = close_safe

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            _observe(self.latency, args, started)


@dataclass(frozen=True)
class RedisNodes:
    """What a ``redis+sentinel://`` or ``redis+cluster://`` URL names."""

    scheme: str
    addresses: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    master_name: str | None  # sentinel only
    db: int


def parse_redis_nodes(url: str) -> RedisNodes:
    """Split a multi-node Redis URL; :class:`ValueError` says what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"not a multi-node Redis URL scheme: {parts.scheme!r}")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    addresses = tuple(_address(h, _DEFAULT_PORTS[parts.scheme]) for h in hosts.split(","))
    segments = [unquote(s) for s in parts.path.split("/")[1:] if s]
    if parts.scheme == "redis+sentinel":
        if not segments or len(segments) > 2:
            raise ValueError("a sentinel URL ends in /<master-name> or /<master-name>/<db>")
        master_name, db = segments[0], _db(segments[1:])
    else:
        if len(segments) > 1 or _db(segments) != 0:
            raise ValueError("Redis Cluster has database 0 only")
        master_name, db = None, 0
    return RedisNodes(
        parts.scheme,
        addresses,
        unquote(username) or None,
        unquote(password) or None,
        master_name,
        db,
    )


def _address(text: str, default_port: int) -> tuple[str, int]:
    host, colon, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not colon:
        host, port = text, str(default_port)
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host, int(port)


def _db(segments: list[str]) -> int:
    if not segments:
        return 0
    if not segments[0].isdigit():
        raise ValueError(f"database {segments[0]!r} is not a number")
    return int(segments[0])


def instrumented_redis(url: str, *, timeout: float, latency: Histogram | None) -> Redis:
    """A client for ``url`` whose calls give up after ``timeout`` and are timed into ``latency``.

    The scheme picks the topology (see the module's docstring). Whatever it
    is, callers get the :class:`~redis.asyncio.Redis` interface.
    """
    if not timeout > 0:
        raise ValueError("a Redis client needs a timeout above 0 (its writes are timed)")
    scheme = urlsplit(url).scheme
    if scheme == "redis+sentinel":
        return _sentinel_client(parse_redis_nodes(url), timeout=timeout, latency=latency)
    if scheme == "redis+cluster":
        return _cluster_client(parse_redis_nodes(url), timeout=timeout, latency=latency)
    # A blocking pool: past its connections a command waits (at most ``timeout``)
    # for one to come back, instead of failing at once (MaxConnectionsError), so a
    # burst of requests is slowed, not refused.
    # Not ``from_url``, which lets the URL pick the connection class as it lets the
    # URL's options (``?socket_timeout=...``) override the keywords: the latter kept.
    options: dict[str, Any] = {
        "max_connections": REDIS_MAX_CONNECTIONS,
        "timeout": timeout,
        **_pool_options(),
        **_connection_options(timeout),
        **parse_url(url),
    }
    options["connection_class"] = _CLOSE_SAFE[options.get("connection_class", Connection)]
    if not options["socket_timeout"]:  # a URL's ?socket_timeout=0: writes untimed
        raise ValueError("a Redis URL's socket_timeout must be above 0")
    pool = BlockingConnectionPool(**options)
    client = InstrumentedRedis(connection_pool=pool)
    client.auto_close_connection_pool = True  # aclose() closes the pool it was given
    client.latency = latency
    return client


def _connection_options(timeout: float) -> dict[str, Any]:
    """What every connection to a Redis node is opened with, whatever the topology: a
    reply (and a connect) may take ``timeout``; one idle for 30 s is PINGed before use."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
    }


def _pool_options() -> dict[str, Any]:
    """What every pool of connections to one Redis (a server, a Sentinel group's primary)
    and every cluster client is made with: maintenance notifications off.

    They are Redis Enterprise's (a node announcing it will move), which redis-py 8
    asks for on every RESP3 connection unless told not to; and while they are on,
    its pool hands out a pooled connection without checking whether the server
    closed it. After a Redis restart, or a ``CLIENT KILL``, every connection
    opened before would then fail its next command (``Connection closed by
    server``): a login refused for a server that is back. Off, the pool finds such
    a connection closed and opens a new one.
    """
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


#: How often a Sentinel group's client asks the sentinels which node is primary, at most.
PRIMARY_RECHECK_SECONDS = 1.0


class _FreshPrimaryPool(SentinelConnectionPool):
    """A Sentinel primary's pool that asks the sentinels who the primary is again, at most
    every :data:`PRIMARY_RECHECK_SECONDS`, and never hands out a connection to another node.

    redis-py asks only when it opens a connection. A primary that was paused (SIGSTOP, a
    frozen VM) while the sentinels promoted a replica comes back still believing it is
    the primary, for the ten to twenty seconds the sentinels take to demote it, and
    every pooled connection to it would be handed out as before: writes (a revocation, a
    session) land on a node whose data is about to be thrown away, and messages are
    published where no verifier listens. When the answer changes, redis-py closes the
    idle connections; one in use then, or handed out meanwhile, is reconnected (to the
    node the sentinels name) before it is handed out again.
    """

    _checked_at = float("-inf")
    #: How long the question may hold the request that asks it (the dependency timeout).
    recheck_timeout = 2.0

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        if loop.time() - self._checked_at >= PRIMARY_RECHECK_SECONDS:
            self._checked_at = loop.time()  # one question at a time, whatever comes meanwhile
            try:
                async with asyncio.timeout(self.recheck_timeout):
                    await self.get_master_address()  # type: ignore[no-untyped-call]
            except (RedisError, OSError, TimeoutError) as exc:
                # The sentinels do not answer: the connection in hand is no worse than
                # before; opening a new one needs them, and fails there if they stay away.
                log.info("could not ask the sentinels for the primary: %r", exc)
            finally:
                self._checked_at = loop.time()  # the next question a second after this one
        connection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        if self._elsewhere(connection):
            try:
                await connection.disconnect()
                await connection.connect()  # asks the sentinels for the address
            except BaseException:
                await self.release(connection)
                raise
        return connection

    async def release(self, connection: Any) -> None:
        try:
            if self._elsewhere(connection):
                await connection.disconnect(nowait=True)
        finally:
            await super().release(connection)

    def _elsewhere(self, connection: Any) -> bool:
        """Connected to a node other than the primary the sentinels named last."""
        return (
            self.master_address is not None
            and connection.is_connected
            and (connection.host, connection.port) != tuple(self.master_address)
        )


def _sentinel_client(nodes: RedisNodes, *, timeout: float, latency: Histogram | None) -> Redis:
    assert nodes.master_name is not None
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(nodes.addresses),
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # One try per sentinel, then the next one: redis-py's default retries a
            # sentinel that does not answer ten times before it asks another.
            "retry": Retry(NoBackoff(), 0),
        },
    )
    # Each new connection asks the sentinels for the primary's address, and a
    # connection to a demoted primary ("READONLY") is dropped: after a
    # failover, commands reach the new primary without a new client.
    client = cast(
        SentinelManagedRedis,
        sentinel.master_for(
            nodes.master_name,
            redis_class=SentinelManagedRedis,
            connection_pool_class=_FreshPrimaryPool,
            connection_class=CloseSafeSentinelConnection,
            db=nodes.db,
            username=nodes.username,
            password=nodes.password,
            **_pool_options(),
            **_connection_options(timeout),
        ),
    )
    client.latency = latency
    client.sentinels = sentinel
    cast(_FreshPrimaryPool, client.connection_pool).recheck_timeout = timeout
    return client


def _cluster_client(nodes: RedisNodes, *, timeout: float, latency: Histogram | None) -> Redis:
    client = InstrumentedRedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes.addresses],
        # The servers keep serving the slots of live shards while one fails
        # over; so does the client.
        require_full_coverage=False,
        username=nodes.username,
        password=nodes.password,
        **_pool_options(),
        **_connection_options(timeout),
    )
    client.latency = latency
    # RedisCluster is not a Redis subclass, but offers the same commands,
    # pipelines, Lua scripts and pub/sub under the same names. The code base
    # is typed against Redis and keeps to what both do, plus one rule mypy
    # cannot see: a MULTI or a script touches one hash slot (the tests run
    # every such path against a real cluster).
    return cast(Redis, client)
