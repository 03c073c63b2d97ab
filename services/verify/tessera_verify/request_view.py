"""What authentication reads from a request: its headers and the peer's address.

The authenticators, :func:`~tessera_verify.principal.bearer_token` and
:func:`~tessera_verify.cookies.cookie_value` take a :class:`RequestView`, so one
authentication stack serves every framework: an aiohttp ``web.Request`` is one
as it is, and the ASGI middleware (:mod:`tessera_verify.asgi`) builds one from
the ASGI scope. Nothing else of a request (body, path, query) is ever read to
decide who is calling.
"""

from __future__ import annotations

from typing import Protocol

from multidict import CIMultiDictProxy

__all__ = ["RequestView"]


class RequestView(Protocol):
    """The parts of an HTTP request that carry credentials."""

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """Every header line, case-insensitive, repeated names kept (a cookie sent twice
        must be seen twice)."""
        ...

    @property
    def remote(self) -> str | None:
        """The direct peer's address (a trusted proxy's, behind nginx), None when unknown."""
        ...
