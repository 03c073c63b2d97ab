"""Registration and password checks: the only place that touches password hashes."""

from __future__ import annotations

import logging

from tessera_verify.clock import Clock
from tessera_verify.errors import InvalidCredentials, InvalidRequest

from .passwords import PasswordHasher
from .users import User, UserRepository, check_password_policy, normalize_username

log = logging.getLogger(__name__)


class Accounts:
    def __init__(self, users: UserRepository, hasher: PasswordHasher, clock: Clock) -> None:
        self.users = users
        self.hasher = hasher
        self._clock = clock

    async def register(self, username: str, password: str) -> User:
        normalized = normalize_username(username)
        check_password_policy(password)
        password_hash = await self.hasher.hash(password)
        return await self.users.create(normalized, password_hash, now=self._clock.now())

    async def set_disabled(self, user_id: str, disabled: bool) -> None:
        await self.users.set_disabled(user_id, disabled)

    async def change_password(self, user_id: str, password: str) -> None:
        check_password_policy(password)
        password_hash = await self.hasher.hash(password)
        await self.users.set_password(user_id, password_hash, now=self._clock.now())

    async def authenticate(self, username: str, password: str) -> User:
        """The user, or :class:`InvalidCredentials` with the same work for every failure."""
        try:
            normalized = normalize_username(username)
        except InvalidRequest:
            normalized = None
        user = None if normalized is None else await self.users.by_username(normalized)
        if user is None:
            await self.hasher.verify_dummy(password)
            raise InvalidCredentials()
        if not await self.hasher.verify(user.password_hash, password) or user.disabled:
            raise InvalidCredentials()
        if self.hasher.needs_rehash(user.password_hash):
            new_hash = await self.hasher.hash(password)
            await self.users.replace_hash(user.id, user.password_hash, new_hash)
            log.info("rehashed the password of user %s with the current parameters", user.id)
        return user
