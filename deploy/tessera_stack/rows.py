"""The rows of the load-balancer demonstration (DESIGN.md), as stack settings.

A row is a pair (where the credential state lives, how nginx balances):
the replicas' ``TESSERA_AUTH_METHODS`` and an nginx policy. The launcher
switches the running stack between rows; the demo logs in the way each
row's replicas expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tessera_stack.nginx_conf import POLICIES

__all__ = ["DEFAULT_ROW", "ROWS", "Row", "policy_problem", "row"]

#: How a client logs in for a row: at the replica itself (POST /api/login,
#: session in that replica's memory), or at the auth service (POST
#: /auth/login) for a shared session cookie or for an access token.
LoginKind = Literal["replica", "session", "token"]


@dataclass(frozen=True)
class Row:
    """One row of the demonstration table."""

    number: int
    methods: str
    policy: str
    login: LoginKind
    state: str
    balancing: str
    expectation: str

    @property
    def label(self) -> str:
        """A short label for tables: ``"replica memory / ip_hash"``."""
        return f"{self.state} / {self.balancing}"


ROWS: dict[int, Row] = {
    row.number: row
    for row in (
        Row(
            1,
            "local_session",
            "round_robin",
            "replica",
            "replica memory",
            "round-robin",
            "logged in on one replica, unknown on the others: most requests fail",
        ),
        Row(
            2,
            "local_session",
            "ip_hash",
            "replica",
            "replica memory",
            "ip_hash",
            "works; a replica's loss logs its users out",
        ),
        Row(
            3,
            "local_session",
            "route_cookie",
            "replica",
            "replica memory",
            "route cookie",
            "works, new logins balanced; a replica's loss logs its users out",
        ),
        Row(
            4,
            "shared_session",
            "round_robin",
            "session",
            "shared Redis",
            "round-robin",
            "works; losing a replica is invisible",
        ),
        Row(
            5,
            "jwt",
            "round_robin",
            "token",
            "JWT",
            "round-robin",
            "works with no shared state",
        ),
        Row(
            6,
            "forward",
            "forward_auth",
            "session",
            "forward auth",
            "auth_request",
            "works; one hop to the auth service per request",
        ),
    )
}
DEFAULT_ROW = 4


def row(number: int) -> Row:
    """The row numbered ``number``; ``ValueError`` for an unknown one."""
    try:
        return ROWS[number]
    except KeyError:
        raise ValueError(f"there is no row {number}; rows are 1-{max(ROWS)}") from None


def policy_problem(selected: Row, policy: str) -> str | None:
    """Why ``policy`` cannot serve ``selected``'s replicas, or ``None`` when it can.

    Any balancing policy can be tried with any credential state (that is the
    point of the table), except that forward-auth replicas accept only the
    identity nginx's ``auth_request`` gives them, and only the
    ``forward_auth`` policy gives it.
    """
    if policy not in POLICIES:
        return f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}"
    forward_replicas = selected.methods == "forward"
    if forward_replicas != (policy == "forward_auth"):
        return (
            f"row {selected.number} needs the forward_auth policy"
            if forward_replicas
            else f"the forward_auth policy is only for row {_forward_row()}"
        )
    return None


def _forward_row() -> int:
    return next(r.number for r in ROWS.values() if r.methods == "forward")
