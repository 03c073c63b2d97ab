"""Every Redis key tessera writes, in one place."""

PREFIX = "tessera"


def session(storage_key: str) -> str:
    return f"{PREFIX}:session:{storage_key}"


def user_sessions(user_id: str) -> str:
    return f"{PREFIX}:user-sessions:{user_id}"


def refresh_token(family_id: str, digest: str = "*") -> str:
    """A refresh token, by the keyed hash of it, in its family's hash slot.

    With only a family (or ``"*"``), a SCAN/KEYS pattern for its tokens.
    """
    return f"{PREFIX}:refresh:{{{family_id}}}:{digest}"


def refresh_family(family_id: str) -> str:
    return f"{PREFIX}:refresh-family:{{{family_id}}}"


def user_refresh_families(user_id: str) -> str:
    return f"{PREFIX}:user-refresh-families:{user_id}"


def login_failures(subject: str, window: int, *, name: str | None = None) -> str:
    """A subject's failures in one window (or another counter of the subject's, ``name``);
    all of a subject's keys share a hash slot."""
    middle = "" if name is None else name + ":"
    return f"{PREFIX}:login-failures:{{{subject}}}:{middle}{window}"


# The revocation plane: one hash tag, so every script and snapshot touches one slot
# (Redis Cluster) and the feed is published by the node its subscribers listen to.
REVOCATION_TAG = "{rev}"


def revocations(kind: str) -> str:
    return f"{PREFIX}:{REVOCATION_TAG}:{kind}"


def revocation_generation() -> str:
    return f"{PREFIX}:{REVOCATION_TAG}:generation"


def revocation_seq() -> str:
    return f"{PREFIX}:{REVOCATION_TAG}:seq"


def revocation_feed() -> str:
    return f"{PREFIX}:{REVOCATION_TAG}:feed"
