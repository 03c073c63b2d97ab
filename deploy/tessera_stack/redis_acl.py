"""Redis users per role: what the auth service and the replicas may do (least privilege).

One rule set, kept in ``deploy/roles/redis-users.acl.template`` and rendered from
there by the local stack (here) and by ``deploy/compose/make-secrets.sh``:

- ``default`` (the administrator: the launcher, tests, operators): everything,
  behind a password.
- ``tessera-auth``: read and write every ``tessera:*`` key and channel, run the
  scripts; nothing administrative but ``INFO`` (the revocation plane names its
  copy by the server's run ID).
- ``tessera-replica``: read a session and move its time of death
  (``GET``, ``PEXPIRETIME``, ``PEXPIREAT``: none creates a key or changes a
  record), read the revocation plane (read-only keys) and listen to its feed.
  It cannot write a session, a refresh token or a revocation, publish on the
  feed, or run a script: whatever a replica's configuration holds, it cannot
  make a credential that anyone accepts.

Passwords are stored as SHA-256 digests (``#<hex>``), so the ACL file and
``ps`` never show one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["ADMIN", "AUTH_USER", "REPLICA_USER", "ROLES", "render_acl", "role_url"]

TEMPLATE = Path(__file__).resolve().parents[1] / "roles" / "redis-users.acl.template"

ADMIN = "default"
AUTH_USER = "tessera-auth"
REPLICA_USER = "tessera-replica"
#: Each user's placeholder in the template, by user name.
ROLES = {ADMIN: "ADMIN", AUTH_USER: "AUTH", REPLICA_USER: "REPLICA"}


def render_acl(passwords: dict[str, str], template: Path = TEMPLATE) -> str:
    """The ACL file for ``passwords`` (user name -> password), every role given one."""
    missing = set(ROLES) - set(passwords)
    if missing:
        raise ValueError(f"no password for {', '.join(sorted(missing))}")
    text = template.read_text(encoding="utf-8")
    for user, placeholder in ROLES.items():
        digest = hashlib.sha256(passwords[user].encode()).hexdigest()
        text = text.replace(f"@{placeholder}_SHA256@", digest)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return "\n".join(lines) + "\n"


def role_url(url: str, user: str, password: str) -> str:
    """``url`` (``redis://host:port/db``) logged in as ``user``."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{credentials}@{host}"))
