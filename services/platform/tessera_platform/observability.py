"""Structured JSON logs carrying the request ID, and the request ID itself.

nginx sends ``X-Request-ID`` (its ``$request_id``); a service reached directly
makes one up. Every log line written while handling the request carries it, and
the response echoes it, so one ID follows a request through nginx, a replica
and the auth service.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import re
import secrets
import sys
import time
from typing import Any

from aiohttp import web

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: A request ID is unique, not secret (a client may send its own): this process's random
#: prefix and a counter, 32 hex digits as nginx's $request_id, without a system call
#: for randomness on every request (``make bench``: the floor every request pays).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(secrets.randbelow(1 << 32))


def new_request_id() -> str:
    """A fresh request ID: unique within this process's life, and across processes
    with overwhelming probability (64 random bits)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tessera_request_id", default=None
)
access_log = logging.getLogger("tessera.access")


def current_request_id() -> str | None:
    return request_id_var.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request ID, extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(
    service: str, level: str, *, json_logs: bool = True, access_log_enabled: bool = True
) -> None:
    """Route every logger to stderr, as JSON lines (or plain text for a terminal)."""
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    access_log.setLevel(logging.INFO if access_log_enabled else logging.WARNING)


def request_id_of(request: web.Request) -> str:
    """The request's ID: the one it carries (nginx's ``X-Request-ID``) when well formed,
    else a new one."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    return incoming if _VALID_REQUEST_ID.match(incoming) else new_request_id()


def log_access(request: web.Request, status: int, started: float) -> None:
    access_log.info(
        "%s %s %d",
        request.method,
        request.path,
        status,
        extra={
            "fields": {
                "method": request.method,
                "path": request.path,
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "remote": request.remote,
            }
        },
    )
