"""What a running tessera says about its version: ``/healthz`` of the auth service and
of a replica, and ``--version`` of every command line, all the installed
distribution's version (``importlib.metadata``), the one its pyproject.toml declares."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from .conftest import ResourceFactory

Client = TestClient[Any, Any]


async def test_the_auth_service_reports_its_version_in_healthz(auth_client: Client) -> None:
    response = await auth_client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "version": version("tessera-auth")}


async def test_a_replica_reports_its_id_and_version_in_healthz(
    make_replica: ResourceFactory,
) -> None:
    replica = await make_replica("r7")
    response = await replica.get("/healthz")
    assert response.status == 200
    assert await response.json() == {
        "status": "ok",
        "replica": "r7",
        "version": version("tessera-resource"),
    }


@pytest.mark.parametrize(
    ("program", "distribution"),
    [
        ("tessera_auth", "tessera-auth"),
        ("tessera_resource", "tessera-resource"),
    ],
)
def test_version_option_prints_the_installed_distributions(program: str, distribution: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", program, "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == f"{distribution} {version(distribution)}"
