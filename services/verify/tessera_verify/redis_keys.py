"""Every Redis key tessera writes, in one place."""

PREFIX = "tessera"


def session(storage_key: str) -> str:
    return f"{PREFIX}:session:{storage_key}"


def user_sessions(user_id: str) -> str:
    return f"{PREFIX}:user-sessions:{user_id}"


def revoked_jti(jti: str) -> str:
    return f"{PREFIX}:revoked-jti:{jti}"


def refresh_token(family_id: str, digest: str = "*") -> str:
    """A refresh token, by the keyed hash of it, in its family's hash slot.

    With only a family (or ``"*"``), a SCAN/KEYS pattern for its tokens.
    """
    return f"{PREFIX}:refresh:{{{family_id}}}:{digest}"


def revoked_sid(sid: str) -> str:
    return f"{PREFIX}:revoked-sid:{sid}"


def user_valid_after(user_id: str) -> str:
    return f"{PREFIX}:user-valid-after:{user_id}"


def refresh_family(family_id: str) -> str:
    return f"{PREFIX}:refresh-family:{{{family_id}}}"


def user_refresh_families(user_id: str) -> str:
    return f"{PREFIX}:user-refresh-families:{user_id}"


def login_failures(subject: str, window: int) -> str:
    """A subject's failures in one window; all its windows share a hash slot."""
    return f"{PREFIX}:login-failures:{{{subject}}}:{window}"
