"""The client's address, trusting ``X-Forwarded-For`` only from configured proxies."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_trusted(address: str, proxies: Sequence[Network]) -> bool:
    """Whether ``address`` is one of the configured proxies.

    Asked on every request that carries a forwarded identity or ``X-Forwarded-For``,
    mostly about the same few addresses (nginx's): the answers are remembered, a
    bounded number of them, so addresses a client makes up cannot grow the memory.
    """
    return _is_trusted(address, proxies if isinstance(proxies, tuple) else tuple(proxies))


@functools.lru_cache(maxsize=4096)
def _is_trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_ip(request: web.Request, trusted_proxies: Sequence[Network]) -> str:
    """Walk ``X-Forwarded-For`` from the right while the hop is a trusted proxy."""
    peer = request.remote or ""
    if not trusted_proxies or not is_trusted(peer, trusted_proxies):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, trusted_proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer
    return hops[0] if hops else peer
