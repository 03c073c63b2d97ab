"""One Redis server named by URL: over TLS (``rediss://``), over a Unix socket, with options.

A real ``redis-server`` with TLS on (its certificate from a throwaway trustme CA)
and a Unix socket. The client the services open for a ``rediss://`` URL must
verify the server (a client without the CA is refused); whatever the URL, its
connections are the close-safe kind every other topology uses
(:class:`~tessera_verify.dependency_metrics.CloseSafeConnection`), and options in
the URL's query override the client's own, as redis-py's ``from_url`` has them.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import trustme
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tessera_stack.processes import free_port, wait_until
from tessera_verify.dependency_metrics import (
    CloseSafeSSLConnection,
    CloseSafeUnixConnection,
    InstrumentedRedisCluster,
    instrumented_redis,
)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


@contextlib.asynccontextmanager
async def _client(url: str) -> AsyncIterator[Redis]:
    client = instrumented_redis(url, timeout=2.0, latency=None)
    try:
        yield client
    finally:
        await client.aclose()


async def _pooled_connection_class(client: Redis) -> type[object]:
    """The class of the connections ``client``'s pool hands out."""
    connection = await client.connection_pool.get_connection()
    try:
        return type(connection)
    finally:
        await client.connection_pool.release(connection)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A Redis on loopback with TLS only (its port and the CA file that verifies it) and
    a Unix socket (``redis.sock`` beside the CA file)."""
    directory = tmp_path_factory.mktemp("redis-tls")
    ca = trustme.CA()
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(str(ca_file))
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert_file))
    issued.private_key_pem.write_to_path(str(key_file))
    executable = shutil.which("redis-server")
    assert executable is not None
    port = free_port()
    server = subprocess.Popen(
        [
            executable,
            *("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)),
            *("--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "no"),
            *("--unixsocket", str(directory / "redis.sock"), "--unixsocketperm", "700"),
            *("--save", "", "--appendonly", "no", "--dir", str(directory)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: _accepts(port), timeout=10.0)
        assert wait_until((directory / "redis.sock").exists, timeout=10.0)
        yield port, ca_file
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_a_rediss_url_is_served_over_verified_tls(tls_redis: tuple[int, Path]) -> None:
    port, ca_file = tls_redis
    async with _client(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={quote(str(ca_file))}") as client:
        await client.set("tls:key", "v", ex=60)
        assert await client.get("tls:key") == b"v"
        assert await _pooled_connection_class(client) is CloseSafeSSLConnection


async def test_a_rediss_server_the_ca_does_not_vouch_for_is_refused(
    tls_redis: tuple[int, Path],
) -> None:
    port, _ = tls_redis
    async with _client(f"rediss://127.0.0.1:{port}/0") as client:
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.ping()


async def test_a_unix_socket_url_is_served_by_close_safe_connections(
    tls_redis: tuple[int, Path],
) -> None:
    _, ca_file = tls_redis
    async with _client(f"unix://{ca_file.parent / 'redis.sock'}") as client:
        assert await client.ping()
        assert await _pooled_connection_class(client) is CloseSafeUnixConnection


async def test_options_in_the_urls_query_override_the_clients_own(
    tls_redis: tuple[int, Path],
) -> None:
    port, ca_file = tls_redis
    query = f"ssl_ca_certs={quote(str(ca_file))}&socket_timeout=3&max_connections=7&timeout=4"
    async with _client(f"rediss://127.0.0.1:{port}/2?{query}") as client:
        await client.set("tls:db2", "v", ex=60)
        pool = client.connection_pool
        assert pool.max_connections == 7
        assert pool.connection_kwargs["socket_timeout"] == 3.0
        assert pool.connection_kwargs["db"] == 2
        assert await _pooled_connection_class(client) is CloseSafeSSLConnection


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0?socket_timeout=0", "redis://127.0.0.1:1"])
def test_a_client_whose_writes_would_not_be_timed_is_refused(url: str) -> None:
    """Every write must go through the close-safe check, which only a timed write does."""
    timeout = 0.0 if "socket_timeout" not in url else 2.0
    with pytest.raises(ValueError, match="above 0"):
        instrumented_redis(url, timeout=timeout, latency=None)


async def test_a_cluster_client_made_with_tls_keeps_tls_in_its_close_safe_connections() -> None:
    cluster = InstrumentedRedisCluster(host="127.0.0.1", port=1, ssl=True)  # connects lazily
    try:
        assert cluster.connection_kwargs["connection_class"] is CloseSafeSSLConnection
        nodes = cluster.nodes_manager.startup_nodes.values()
        assert nodes and all(node.connection_class is CloseSafeSSLConnection for node in nodes)
    finally:
        await cluster.aclose()
