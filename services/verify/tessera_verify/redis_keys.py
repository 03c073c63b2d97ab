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
