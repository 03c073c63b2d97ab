"""Asking the auth service whether a password is right (for replicas with in-process sessions).

The replica never sees a password hash: it asks the auth service's
``/auth/password-check`` (which issues nothing, and is throttled like login)
and trusts the answer, like an app server that delegates password checks to an
identity service.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import hdrs

from tessera_verify.errors import (
    InvalidCredentials,
    InvalidRequest,
    ServiceUnavailable,
    TooManyAttempts,
)

#: When a 429 from the auth service says nowhere how long to wait.
DEFAULT_RETRY_AFTER = 60
MAX_RETRY_AFTER = 86_400


@dataclass(frozen=True)
class CheckedUser:
    user_id: str
    username: str
    #: When the auth service began the check, on its clock: the date of what is started
    #: from it (see ``SessionManager.create``'s ``authenticated_at``).
    checked_at: float


class PasswordChecker:
    def __init__(self, session: aiohttp.ClientSession, auth_url: str, timeout: float) -> None:
        self._session = session
        self._url = auth_url + "/auth/password-check"
        self._timeout = aiohttp.ClientTimeout(total=timeout * 10)  # Argon2 takes a while

    async def check(self, username: str, password: str, *, client_ip: str) -> CheckedUser:
        body = {"username": username, "password": password}
        try:
            async with self._session.post(
                self._url, json=body, timeout=self._timeout, headers={"X-Forwarded-For": client_ip}
            ) as response:
                payload = await response.json(content_type=None)
                status = response.status
                retry_after = response.headers.get(hdrs.RETRY_AFTER)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ServiceUnavailable("the auth service cannot be reached") from exc
        if status == 200 and isinstance(payload, dict) and isinstance(payload.get("user"), dict):
            user = payload["user"]
            checked_at = payload.get("checked_at")
            if (
                isinstance(checked_at, int | float)
                and not isinstance(checked_at, bool)
                and math.isfinite(checked_at)
            ):
                return CheckedUser(str(user["id"]), str(user["username"]), float(checked_at))
        if status == 401:
            raise InvalidCredentials()
        if status == 429:
            # Throttled: the client must wait as long as auth says, not retry at once.
            raise TooManyAttempts(_retry_after(retry_after, payload))
        if status == 400:
            detail = payload.get("detail") if isinstance(payload, dict) else None
            raise InvalidRequest(detail if isinstance(detail, str) else None)
        raise ServiceUnavailable("the auth service could not check the password")


def _retry_after(header: str | None, payload: Any) -> int:
    """The wait auth asked for: its Retry-After header, else its problem's retry_after."""
    in_body = payload.get("retry_after") if isinstance(payload, dict) else None
    candidates = (header, in_body)
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool):
            seconds = value
        elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            seconds = int(value.strip())
        else:
            continue
        return min(max(seconds, 1), MAX_RETRY_AFTER)
    return DEFAULT_RETRY_AFTER
