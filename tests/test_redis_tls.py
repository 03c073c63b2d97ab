"""``rediss://``: Redis over TLS, verified against the CA the URL names.

A real ``redis-server`` with TLS on (its certificate from a throwaway trustme CA).
The client the services open for such a URL must verify the server (a client
without the CA is refused), and its connections are the close-safe kind every
other topology uses.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import trustme
from redis.exceptions import ConnectionError as RedisConnectionError

from tessera_stack.processes import free_port, wait_until
from tessera_verify.dependency_metrics import CloseSafeSSLConnection, instrumented_redis


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A TLS-only Redis on loopback: its port and the CA file that verifies it."""
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
            *("--save", "", "--appendonly", "no", "--dir", str(directory)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: _accepts(port), timeout=10.0)
        yield port, ca_file
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_a_rediss_url_is_served_over_verified_tls(tls_redis: tuple[int, Path]) -> None:
    port, ca_file = tls_redis
    client = instrumented_redis(
        f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={quote(str(ca_file))}",
        timeout=2.0,
        latency=None,
    )
    try:
        await client.set("tls:key", "v", ex=60)
        assert await client.get("tls:key") == b"v"
        connection = await client.connection_pool.get_connection()
        try:
            assert isinstance(connection, CloseSafeSSLConnection)
        finally:
            await client.connection_pool.release(connection)
    finally:
        await client.aclose()


async def test_a_rediss_server_the_ca_does_not_vouch_for_is_refused(
    tls_redis: tuple[int, Path],
) -> None:
    port, _ = tls_redis
    client = instrumented_redis(f"rediss://127.0.0.1:{port}/0", timeout=2.0, latency=None)
    try:
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.ping()
    finally:
        await client.aclose()
