"""What the launcher tells people and scripts: the stack's URLs (printed, and written to
``stack.env``), its row, and errors; passwords never printed."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tessera_stack.rows import ROWS
from tessera_stack.servers import LOOPBACK
from tessera_stack.services import INTROSPECTION_CLIENT_ID
from tessera_stack.state import (
    OPERATOR_SECRET,
    Layout,
    ReplicaEntry,
    StackState,
)


@dataclass(frozen=True)
class StackUrls:
    """The URLs a running stack answers on, as written to ``stack.env``."""

    https_port: int
    auth_port: int
    database_url: str
    redis_url: str
    replicas: tuple[ReplicaEntry, ...]
    row: int
    policy: str
    ca_cert: Path
    #: The stack's introspection client's secret (its ID is INTROSPECTION_CLIENT_ID).
    introspection_secret: str = field(default="", repr=False)
    #: With ``up --monitoring``: the stack's Prometheus.
    prometheus_url: str = ""

    @property
    def base_url(self) -> str:
        return f"https://{LOOPBACK}:{self.https_port}"

    def env(self) -> dict[str, str]:
        return {
            "BASE_URL": self.base_url,
            # nginx routes /auth/ and /.well-known/ to the auth service.
            "AUTH_URL": self.base_url,
            "JWKS_URL": f"{self.base_url}/.well-known/jwks.json",
            "METADATA_URL": f"{self.base_url}/.well-known/oauth-authorization-server",
            # RFC 7662 with HTTP Basic: curl -u "$INTROSPECTION_CLIENT_ID:$INTROSPECTION_..."
            "INTROSPECTION_URL": f"{self.base_url}/auth/introspect",
            "INTROSPECTION_CLIENT_ID": INTROSPECTION_CLIENT_ID,
            "INTROSPECTION_CLIENT_SECRET": self.introspection_secret,
            "REPLICA_URLS": ",".join(f"http://{LOOPBACK}:{r.port}" for r in self.replicas),
            "AUTH_INTERNAL_URL": f"http://{LOOPBACK}:{self.auth_port}",
            "ROW": str(self.row),
            "POLICY": self.policy,
            "CA_CERT": str(self.ca_cert),
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
        } | ({"PROMETHEUS_URL": self.prometheus_url} if self.prometheus_url else {})


def display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def urls_of(layout: Layout, state: StackState) -> StackUrls:
    assert state.port is not None
    assert state.https_port is not None
    assert state.row is not None
    return StackUrls(
        https_port=state.https_port,
        auth_port=state.port,
        database_url=state.database_url,
        redis_url=state.redis_url,
        replicas=tuple(state.replicas),
        row=state.row,
        policy=state.policy,
        ca_cert=layout.tls.ca_cert.absolute(),
        introspection_secret=_read_secret(layout, "introspection_client_secret"),
        prometheus_url=(
            f"http://{LOOPBACK}:{state.prometheus_port}"
            if state.monitoring and state.prometheus_port is not None
            else ""
        ),
    )


def _read_secret(layout: Layout, name: str) -> str:
    try:
        return layout.secret(name).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return ""


def write_stack_env(layout: Layout, urls: StackUrls) -> None:
    """Write ``stack.env`` atomically, 0600: it holds the Redis administrator's password
    and the introspection client's secret."""
    lines = [f"{key}={value}\n" for key, value in urls.env().items()]
    tmp = layout.stack_env.with_name(".stack.env.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("".join(lines))
    tmp.replace(layout.stack_env)


def describe_row(state: StackState) -> str:
    if state.row is None or state.row not in ROWS:
        return ""
    selected = ROWS[state.row]
    return (
        f"row {selected.number}: credentials in {selected.state}; replicas accept "
        f"{state.methods or selected.methods}; nginx policy {state.policy}"
    )


def print_urls(layout: Layout, urls: StackUrls, state: StackState) -> None:
    env = urls.env()
    rows = [
        ("base URL", env["BASE_URL"]),
        ("auth", f"{env['AUTH_URL']}/auth/  (directly: {env['AUTH_INTERNAL_URL']})"),
        ("JWKS", env["JWKS_URL"]),
        ("metadata", env["METADATA_URL"]),
        (
            "introspect",
            f"{env['INTROSPECTION_URL']}  (client {env['INTROSPECTION_CLIENT_ID']}, "
            "secret in the env file)",
        ),
        ("replicas", ", ".join(f"{r.id}={LOOPBACK}:{r.port}" for r in urls.replicas)),
        (
            "live page",
            f"{env['BASE_URL']}/live/  (operator secret: "
            f"{display(layout.secret(OPERATOR_SECRET))})",
        ),
        ("CA cert", display(Path(env["CA_CERT"])) + "  (curl --cacert ...)"),
        ("database", without_password(env["DATABASE_URL"])),
        ("redis", without_password(env["REDIS_URL"])),
        *(
            [("prometheus", f"{urls.prometheus_url}  (targets: /targets, alerts: /alerts)")]
            if urls.prometheus_url
            else []
        ),
        ("env file", display(layout.stack_env)),
        ("logs", "./tessera logs NAME  (auth, nginx, r1, ...)"),
        ("admin", "./tessera users create NAME  (users, sessions, keys, audit: --help)"),
        ("stop", "./tessera down"),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"  {describe_row(state)}")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def without_password(url: str) -> str:
    """``url`` fit to print: its password (the Redis administrator's) left out."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}").geturl()
