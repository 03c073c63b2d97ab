"""The one regulated way to check a password: what login and the replicas' check share.

Reserve, then verify (see :mod:`tessera_auth.regulation`): the guess counts
before any Argon2 work, a right password gives the reservation back, an
outage gives it back too (not the caller's fault), and every outcome is
counted and audited the same way whichever endpoint asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera_verify.errors import InvalidCredentials, TooManyAttempts

from .accounts import Accounts
from .audit import AuditLog
from .metrics import AuthMetrics
from .regulation import Regulator
from .users import User, fold_username


@dataclass(frozen=True)
class PasswordCheck:
    regulator: Regulator
    accounts: Accounts
    metrics: AuthMetrics
    audit: AuditLog

    async def check(self, username: str, password: str, *, ip: str, event: str) -> User:
        """The user whose password this is; 401, 429 or 503 otherwise.

        ``event`` names the caller in the audit trail (``login``, ``password.check``).
        """
        try:
            attempt = await self.regulator.reserve(fold_username(username), ip)
        except TooManyAttempts:
            self.metrics.logins.labels("throttled").inc()
            self.audit.record(event, outcome="throttled", username=username[:64], ip=ip)
            raise
        try:
            user = await self.accounts.authenticate(username, password, rank=attempt.rank)
        except InvalidCredentials:
            self.metrics.logins.labels("invalid_credentials").inc()
            self.audit.record(event, outcome="failure", username=username[:64], ip=ip)
            raise  # the reservation stays: it was a failure
        except Exception:
            self.metrics.logins.labels("error").inc()
            await attempt.succeeded()
            raise
        await attempt.succeeded()
        return user
