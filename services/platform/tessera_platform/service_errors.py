"""The errors a tessera service answers 503 for, PostgreSQL's among them.

The verify package knows Redis and HTTP only; the services also depend on
PostgreSQL, and a connection it drops (a restart, ``pg_terminate_backend``, a
full pool) is "a dependency is down" too: 503, fail closed, never a 500.
"""

from __future__ import annotations

import asyncpg

from tessera_verify.error_middleware import DEPENDENCY_ERRORS as VERIFY_DEPENDENCY_ERRORS

__all__ = ["DEPENDENCY_ERRORS"]

DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    *VERIFY_DEPENDENCY_ERRORS,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    # "terminating connection due to administrator command" and kin: the server went away.
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.InterfaceError,
    # A pooled connection the server closed (pg_terminate_backend) that asyncpg had not
    # yet seen close, met inside a transaction (single statements run again elsewhere:
    # tessera_platform.pg_migrations): nothing was sent, the caller may try again.
    asyncpg.exceptions.InternalClientError,
)
