"""Every Redis key tessera writes, in one place."""

PREFIX = "tessera"


def session(storage_key: str) -> str:
    return f"{PREFIX}:session:{storage_key}"


def user_sessions(user_id: str) -> str:
    return f"{PREFIX}:user-sessions:{user_id}"


def revoked_jti(jti: str) -> str:
    return f"{PREFIX}:revoked-jti:{jti}"


def refresh_token(token_hash: str) -> str:
    return f"{PREFIX}:refresh:{token_hash}"


def revoked_sid(sid: str) -> str:
    return f"{PREFIX}:revoked-sid:{sid}"


def user_valid_after(user_id: str) -> str:
    return f"{PREFIX}:user-valid-after:{user_id}"


def refresh_family(family_id: str) -> str:
    return f"{PREFIX}:refresh-family:{family_id}"


def user_refresh_families(user_id: str) -> str:
    return f"{PREFIX}:user-refresh-families:{user_id}"


def login_failures(subject: str, window: int) -> str:
    return f"{PREFIX}:login-failures:{subject}:{window}"
