"""Registration and password checks: the only place that touches password hashes."""

from __future__ import annotations

import logging

from tessera_verify.clock import Clock
from tessera_verify.errors import InvalidCredentials, InvalidRequest, ServerBusy, UsernameTaken

from .password_policy import PasswordPolicy, normalize_password
from .passwords import PasswordHasher
from .users import User, UserRepository, normalize_username

log = logging.getLogger(__name__)


class Accounts:
    def __init__(
        self,
        users: UserRepository,
        hasher: PasswordHasher,
        clock: Clock,
        policy: PasswordPolicy | None = None,
    ) -> None:
        self.users = users
        self.hasher = hasher
        self.policy = policy or PasswordPolicy()
        self._clock = clock

    async def register(self, username: str, password: str, *, rank: int = 0) -> User:
        """Every cheap refusal (name, policy, name taken) comes before the Argon2 work.

        ``rank`` (here and below) is the caller's Argon2 admission rank (see
        :class:`~tessera_auth.passwords.PasswordHasher`).
        """
        normalized = normalize_username(username)
        secret = self.policy.check(password, username=normalized)
        if await self.users.by_username(normalized) is not None:
            raise UsernameTaken()
        password_hash = await self.hasher.hash(secret, rank=rank)
        # A concurrent registration of the same name still loses on the unique index.
        return await self.users.create(normalized, password_hash, now=self._clock.now())

    async def set_disabled(self, user_id: str, disabled: bool) -> None:
        await self.users.set_disabled(user_id, disabled)

    async def change_password(self, user: User, password: str) -> None:
        secret = self.policy.check(password, username=user.username, field_name="new_password")
        password_hash = await self.hasher.hash(secret)
        await self.users.set_password(user.id, password_hash, now=self._clock.now())

    async def authenticate(self, username: str, password: str, *, rank: int = 0) -> User:
        """The user, or :class:`InvalidCredentials` with the same work for every failure."""
        try:
            normalized = normalize_username(username)
        except InvalidRequest:
            normalized = None
        user = None if normalized is None else await self.users.by_username(normalized)
        if user is None:
            # As many verifications as a wrong password for a real user (see _verify).
            secret = normalize_password(password)
            await self.hasher.verify_dummy(secret, rank=rank)
            if secret != password:
                await self.hasher.verify_dummy(password, rank=rank)
            raise InvalidCredentials()
        if not await self.verify_password(user, password, rank=rank) or user.disabled:
            raise InvalidCredentials()
        return user

    async def verify_password(self, user: User, password: str, *, rank: int = 0) -> bool:
        """Whether ``password`` is ``user``'s; a match on an outdated hash is rehashed.

        Hashes are of the NFKC form. Hashes made before passwords were normalised
        hold the password as it was typed; when the NFKC form fails and differs
        from the typed one, the typed one is tried too, and on a match replaced by
        a hash of the NFKC form, so each such account migrates at its next login.
        The second try costs a verification only for input that NFKC changes, and
        unknown users pay it too, so it tells nobody whether an account exists.
        """
        secret = normalize_password(password)
        if await self.hasher.verify(user.password_hash, secret, rank=rank):
            outdated = self.hasher.needs_rehash(user.password_hash)
        elif secret != password and await self.hasher.verify(
            user.password_hash, password, rank=rank
        ):
            outdated = True
        else:
            return False
        if outdated:
            await self._rehash(user, secret)
        return True

    async def _rehash(self, user: User, secret: str) -> None:
        try:
            new_hash = await self.hasher.hash(secret)
        except ServerBusy:
            return  # an upgrade, not a need: the next login does it
        await self.users.replace_hash(user.id, user.password_hash, new_hash)
        log.info("rehashed the password of user %s with the current parameters", user.id)
