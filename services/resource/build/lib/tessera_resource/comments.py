"""The forum's comments, in the resource service's own PostgreSQL table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

MAX_COMMENT_LENGTH = 2000


@dataclass(frozen=True)
class Comment:
    id: int
    user_id: str
    username: str | None
    body: str
    served_by: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "username": self.username,
            "body": self.body,
            "served_by": self.served_by,
            "created_at": self.created_at.isoformat(),
        }


class CommentRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def add(
        self, *, user_id: str, username: str | None, body: str, served_by: str, now: float
    ) -> Comment:
        row = await self._pool.fetchrow(
            """INSERT INTO comments (user_id, username, body, served_by, created_at)
               VALUES ($1, $2, $3, $4, $5) RETURNING *""",
            user_id,
            username,
            body,
            served_by,
            datetime.fromtimestamp(now, tz=UTC),
        )
        assert row is not None
        return Comment(**dict(row))

    async def latest(self, limit: int) -> list[Comment]:
        rows = await self._pool.fetch(
            "SELECT * FROM comments ORDER BY created_at DESC, id DESC LIMIT $1", limit
        )
        return [Comment(**dict(row)) for row in rows]
