"""The auth service's own Prometheus counters of password work, read before and after a run.

What the service says it answered is the cross-check of what the benchmark's
clients counted: ``tessera_http_requests_total`` by route and status for the
routes that hash passwords, and ``tessera_logins_total`` by outcome
(``throttled`` = 429 from the regulator, ``invalid_credentials`` = a wrong
password verified, ``error`` = not the caller's fault, e.g. 503 ``server_busy``).
"""

from __future__ import annotations

import aiohttp
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "HASHED_ANSWERS",
    "HASHING_ROUTES",
    "dependency_calls",
    "difference",
    "outcomes",
    "read_counters",
]

#: The routes where a request may cost an Argon2 hash.
HASHING_ROUTES = ("/auth/login", "/auth/register", "/auth/password")
#: Answers that come only after Argon2 ran: a login that verified a password (right or
#: wrong, or the dummy hash of an unknown name), an account created, a password change
#: that checked the current password.
HASHED_ANSWERS = (
    "POST /auth/login 200",
    "POST /auth/login 401",
    "POST /auth/register 201",
    "POST /auth/password 200",
    "POST /auth/password 403",
)


async def read_counters(http: aiohttp.ClientSession, base_url: str) -> dict[str, int]:
    """``"POST /auth/login 429"``-style request counts and ``"login throttled"``-style
    login outcomes, from ``base_url``'s /metrics."""
    counts: dict[str, int] = {}
    for family in await _families(http, base_url):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "tessera_http_requests_total":
                if labels.get("route") in HASHING_ROUTES:
                    key = f"{labels['method']} {labels['route']} {labels['status']}"
                    counts[key] = int(sample.value)
            elif sample.name == "tessera_logins_total":
                counts[f"login {labels['outcome']}"] = int(sample.value)
    return counts


async def dependency_calls(http: aiohttp.ClientSession, base_url: str) -> dict[str, int]:
    """How many calls ``base_url``'s service made to each dependency (``redis``,
    ``postgresql``): the count of ``tessera_dependency_duration_seconds``, where a Redis
    pipeline is one call (one round trip) and a PostgreSQL call is one statement."""
    calls: dict[str, int] = {}
    for family in await _families(http, base_url):
        for sample in family.samples:
            if sample.name == "tessera_dependency_duration_seconds_count":
                dependency = sample.labels["dependency"]
                calls[dependency] = calls.get(dependency, 0) + int(sample.value)
    return calls


async def _families(http: aiohttp.ClientSession, base_url: str) -> list[Metric]:
    async with http.get(f"{base_url}/metrics") as response:
        if response.status != 200:
            raise RuntimeError(f"{base_url}/metrics answered {response.status}")
        text = await response.text()
    return list(text_string_to_metric_families(text))


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """What was counted in between (counters that did not move left out)."""
    moved = {key: value - before.get(key, 0) for key, value in after.items()}
    return {key: value for key, value in sorted(moved.items()) if value}


def outcomes(counts: dict[str, int]) -> dict[str, int]:
    """Of the requests in ``counts``: how many reached Argon2 (``hashed``), and how many
    were answered 429 (the regulator) and 503 (the Argon2 queue full, or a dependency
    failed: the counter does not tell them apart)."""

    def answered(status: str) -> int:
        return sum(
            value
            for key, value in counts.items()
            if key.startswith("POST ") and key.endswith(f" {status}")
        )

    return {
        "hashed": sum(counts.get(key, 0) for key in HASHED_ANSWERS),
        "429": answered("429"),
        "503": answered("503"),
    }
