"""What a running tessera says about its version: ``/healthz`` of the auth service and
of a replica, and ``--version`` of every command line, all the installed
distribution's version (``importlib.metadata``), the one its pyproject.toml declares."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path
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


ROOT = Path(__file__).resolve().parents[1]
MEMBERS = (
    "services/verify",
    "services/platform",
    "services/auth",
    "services/resource",
    "deploy",
    "demo",
)


def test_the_workspace_packages_share_one_version_and_the_changelog_knows_it() -> None:
    versions = {
        member: tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]["version"]
        for member in MEMBERS
    }
    assert len(set(versions.values())) == 1, versions
    (current,) = set(versions.values())
    assert version("tessera-auth") == current  # the installed one is this tree's
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
    assert f"version {current}" in changelog or f"## [{current}]" in changelog
    policy = changelog.split("## Versioning policy", 1)[1].split("\n## ", 1)[0]
    for contract in ("the HTTP API", "the configuration", "the `tessera-verify` package"):
        assert contract in policy, contract


def test_security_policy_says_how_to_report_privately_and_what_is_supported() -> None:
    policy = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    for section in ("## Reporting a vulnerability", "## Supported versions", "## Scope"):
        assert section in policy
    assert "Report a vulnerability" in policy
