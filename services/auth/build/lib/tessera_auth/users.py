"""User accounts in PostgreSQL."""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from tessera_verify.errors import InvalidRequest, UsernameTaken

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{2,63}$")


@dataclass(frozen=True)
class User:
    id: str
    username: str
    password_hash: str
    created_at: datetime
    password_changed_at: datetime
    disabled: bool


def fold_username(raw: str) -> str:
    """NFKC + case folding, so ``Alice`` and ``ａｌｉｃｅ`` are one account (and one
    throttling subject, whether or not the name is valid)."""
    return unicodedata.normalize("NFKC", raw).strip().casefold()


def normalize_username(raw: str) -> str:
    """The folded name (:func:`fold_username`); 400 when it is not a valid username."""
    normalized = fold_username(raw)
    if not _USERNAME.match(normalized):
        raise InvalidRequest(
            "username must be 3-64 characters: letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            details={"field": "username"},
        )
    return normalized


def _from_row(row: asyncpg.Record) -> User:
    return User(
        id=str(row["id"]),
        username=row["username"],
        password_hash=row["password_hash"],
        created_at=row["created_at"],
        password_changed_at=row["password_changed_at"],
        disabled=row["disabled"],
    )


def _timestamp(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, tz=UTC)


class UserRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, username: str, password_hash: str, *, now: float) -> User:
        """Insert a user whose ``username`` is already normalised."""
        try:
            row = await self._pool.fetchrow(
                """INSERT INTO users (id, username, password_hash, created_at, password_changed_at)
                   VALUES ($1, $2, $3, $4, $4) RETURNING *""",
                uuid.uuid4(),
                username,
                password_hash,
                _timestamp(now),
            )
        except asyncpg.UniqueViolationError as exc:
            raise UsernameTaken() from exc
        assert row is not None
        return _from_row(row)

    async def by_username(self, username: str) -> User | None:
        row = await self._pool.fetchrow("SELECT * FROM users WHERE username = $1", username)
        return None if row is None else _from_row(row)

    async def by_id(self, user_id: str) -> User | None:
        try:
            key = uuid.UUID(user_id)
        except ValueError:
            return None
        row = await self._pool.fetchrow("SELECT * FROM users WHERE id = $1", key)
        return None if row is None else _from_row(row)

    async def replace_hash(self, user_id: str, old_hash: str, new_hash: str) -> None:
        """Store a rehash of the same password (new parameters); a no-op if it changed meanwhile."""
        await self._pool.execute(
            "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
            uuid.UUID(user_id),
            old_hash,
            new_hash,
        )

    async def set_password(self, user_id: str, password_hash: str, *, now: float) -> None:
        await self._pool.execute(
            "UPDATE users SET password_hash = $2, password_changed_at = $3 WHERE id = $1",
            uuid.UUID(user_id),
            password_hash,
            _timestamp(now),
        )

    async def set_disabled(self, user_id: str, disabled: bool) -> bool:
        result = await self._pool.execute(
            "UPDATE users SET disabled = $2 WHERE id = $1", uuid.UUID(user_id), disabled
        )
        return result.endswith(" 1")
