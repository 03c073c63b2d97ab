"""HTTPS clients for tests that talk to nginx: one loopback source address each.

Shared by tests/test_nginx_configs.py and tests/test_stack_rows.py. The
address scheme (one /24 per client, because nginx's ``ip_hash`` looks at
the first three octets only) is the demo's: see
:func:`tessera_demo.users.source_address`.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from tessera_demo.users import source_address

__all__ = ["https_client", "source_address"]


@asynccontextmanager
async def https_client(
    ca_cert: Path, source_ip: str = "127.0.0.1", *, timeout: float = 10.0
) -> AsyncIterator[aiohttp.ClientSession]:
    """A client that trusts only the stack's CA and connects from ``source_ip``."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    connector = aiohttp.TCPConnector(ssl=context, local_addr=(source_ip, 0), limit=8)
    async with aiohttp.ClientSession(
        connector=connector,
        # unsafe: the jar otherwise refuses cookies from an IP address host.
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as session:
        yield session
