"""Changing one's password: the use case behind ``POST /auth/password`` and the portal's form.

Reserve, then verify (as at login, :mod:`tessera_auth.password_check`): a stolen
session must not become an unthrottled oracle for the current password. A right
one gives the reservation back; so does an outage or a full Argon2 queue (no
guess was made). Then the new password meets the policy, is stored, and
everything issued before is revoked, the device that asked included.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from tessera_verify.errors import InvalidCredentials, WrongCurrentPassword

from . import app_state
from .accounts import Accounts
from .audit import AuditLog
from .regulation import Regulator
from .revoker import RevocationSummary, Revoker

#: The regulator's account key for password changes (apart from logins of the same name).
SUBJECT_PREFIX = "password-change:"


@dataclass(frozen=True)
class PasswordChange:
    regulator: Regulator
    accounts: Accounts
    revoker: Revoker
    audit: AuditLog

    async def change(self, user_id: str, current: str, new: str, *, ip: str) -> RevocationSummary:
        """Raises 403 :class:`WrongCurrentPassword`, 400 ``weak_password``, 429 or 503."""
        attempt = await self.regulator.reserve(SUBJECT_PREFIX + user_id, ip)
        try:
            user = await self.accounts.users.by_id(user_id)
            if user is None:
                raise InvalidCredentials("the caller's user no longer exists")
            correct = await self.accounts.verify_password(user, current, rank=attempt.rank)
        except Exception:
            await attempt.succeeded()  # not a guess (a full Argon2 queue, an outage): give it back
            raise
        if not correct:
            raise WrongCurrentPassword()  # the reservation stays: it was a failure
        await attempt.succeeded()
        await self.accounts.change_password(user, new)  # the policy check is in there
        self.audit.record("password.change", user_id=user.id, username=user.username)
        return await self.revoker.revoke_everything(user.id, reason="password change")


def password_change(app: web.Application) -> PasswordChange:
    """The use case on ``app``'s services."""
    return PasswordChange(
        app[app_state.REGULATOR],
        app[app_state.ACCOUNTS],
        app[app_state.REVOKER],
        app[app_state.AUDIT],
    )
