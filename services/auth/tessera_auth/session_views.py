"""What a session looks like from outside: the API's answers and the operator's CLI.

Never the storage key (the cookie's secret) and never the record as stored:
the public ID names a session in listings and links tokens to it.
"""

from __future__ import annotations

from typing import Any

from tessera_verify.sessions import Session

__all__ = ["session_details", "session_json"]


def session_json(session: Session) -> dict[str, Any]:
    """The session as its owner's login and ``/auth/me`` answers show it."""
    record = session.record
    return {
        "id": record.public_id,
        "created_at": record.created_at,
        "last_seen_at": record.last_seen_at,
        "expires_at": record.expires_at,
    }


def session_details(session: Session) -> dict[str, Any]:
    """:func:`session_json` and where it was made from: a listing of a user's sessions."""
    return {
        **session_json(session),
        "ip": session.record.ip,
        "user_agent": session.record.user_agent,
    }
