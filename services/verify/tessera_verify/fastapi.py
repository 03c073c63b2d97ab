"""FastAPI: the caller as a dependency (``pip install 'tessera-verify[fastapi]'``)::

    from fastapi import FastAPI
    from tessera_verify.asgi import TesseraMiddleware
    from tessera_verify.fastapi import Caller

    app = FastAPI()
    app.add_middleware(TesseraMiddleware, verify=TesseraVerify(config))

    @app.get("/me")
    async def me(caller: Caller) -> dict[str, str]:
        return {"user_id": caller.user_id}

The dependencies read what :class:`~tessera_verify.asgi.TesseraMiddleware` found;
they check nothing themselves, so there is one place where credentials are
checked and one error format: an anonymous caller of an endpoint that needs one is
answered 401 ``application/problem+json`` by the middleware.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .asgi import principal_of, require_principal
from .principal import Principal

__all__ = ["Caller", "OptionalCaller", "optional_principal", "tessera_principal"]


async def tessera_principal(request: Request) -> Principal:
    """The authenticated caller; 401 (problem+json) when the request is anonymous."""
    return require_principal(request.scope)


async def optional_principal(request: Request) -> Principal | None:
    """The caller, or None for an anonymous request (a bad credential is still a 401)."""
    return principal_of(request.scope)


#: An endpoint parameter that is the authenticated caller.
Caller = Annotated[Principal, Depends(tessera_principal)]
#: An endpoint parameter that is the caller, or None when anonymous.
OptionalCaller = Annotated[Principal | None, Depends(optional_principal)]
