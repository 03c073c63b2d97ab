"""Loopback source addresses for clients that must look like different machines.

The auth service throttles by source address (per address, per account and
address, registrations per address), so a benchmark that means "many
attackers" or "a user on a machine of their own" needs each of them to
connect from an address of its own, really bound. Linux routes all of
127.0.0.0/8 to the loopback interface; :class:`SourceAddresses` hands out
``127.B.X.Y`` addresses (B fixed, away from the 127.0.N.1 users of parts 2
and 5), each only once in a run, so no client inherits another's counts.
"""

from __future__ import annotations

import aiohttp

__all__ = ["REQUEST_TIMEOUT", "SourceAddresses", "bound_session"]

#: No request of the benchmark's waits longer for its answer.
REQUEST_TIMEOUT = 10.0
_PER_BLOCK = 254  # the last octet runs 1..254


class SourceAddresses:
    """Fresh loopback addresses ``127.<second>.X.Y``, never the same one twice."""

    def __init__(self, second_octet: int = 64) -> None:
        if not 1 <= second_octet <= 254:
            raise ValueError("the second octet must be 1..254")
        self._second = second_octet
        self._handed_out = 0

    def next(self) -> str:
        index = self._handed_out
        if index >= 256 * _PER_BLOCK:
            raise RuntimeError("out of source addresses")
        self._handed_out += 1
        return f"127.{self._second}.{index // _PER_BLOCK}.{index % _PER_BLOCK + 1}"

    def take(self, count: int) -> list[str]:
        return [self.next() for _ in range(count)]


def bound_session(address: str, *, connections: int = 8) -> aiohttp.ClientSession:
    """A client whose connections come from ``address`` (keep-alive, at most ``connections``),
    keeping no cookies: every request stands alone, as from a client that just arrived."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(address, 0), limit=connections),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
    )
