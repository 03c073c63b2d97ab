"""The README's Node example (services/verify/examples/node) runs as written: ``jose``
from its lock file, a live auth service's JWKS, a freshly issued access token.

Run with the system ``node``; skipped only where there is none. ``npm ci`` installs
into a copy, so the tree never gets a ``node_modules``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tessera_auth.settings import Settings

from .conftest import register_and_login

EXAMPLE = Path(__file__).resolve().parent.parent / "services/verify/examples/node"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="no node on this machine")


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example, installed with ``npm ci`` (the lock file's jose) in a copy."""
    copy = tmp_path_factory.mktemp("node") / "example"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("node_modules"))
    npm = shutil.which("npm")
    assert npm is not None, "node without npm: install npm to run the Node example"
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=copy,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return copy


async def _verify(
    example: Path,
    auth_server: TestServer,
    settings: Settings,
    token: str,
    *,
    audience: str | None = None,
) -> tuple[int, str, str]:
    """Run ``node verify.mjs token`` against ``auth_server``'s JWKS (the loop keeps serving
    while node runs): exit code, stdout, stderr."""
    assert NODE is not None
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "TESSERA_JWKS_URL": str(auth_server.make_url("/.well-known/jwks.json")),
        "TESSERA_ISSUER": settings.issuer,
        "TESSERA_AUDIENCE": audience or settings.audience,
        "TESSERA_ALGORITHMS": settings.jwt_algorithm,
    }
    node = await asyncio.create_subprocess_exec(
        NODE,
        "verify.mjs",
        token,
        cwd=example,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(node.communicate(), timeout=60)
    assert node.returncode is not None
    return node.returncode, out.decode(), err.decode()


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def _tampered(token: str) -> str:
    """``token`` with another subject in its payload and the original signature."""
    header, _, signature = token.split(".")
    claims = {**_claims(token), "sub": "someone-else"}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


async def test_the_node_example_accepts_a_fresh_access_token_via_the_jwks(
    example: Path, auth: TestClient[Any, Any], auth_server: TestServer, settings: Settings
) -> None:
    token = (await register_and_login(auth, credential="token"))["access_token"]
    code, out, err = await _verify(example, auth_server, settings, token)
    assert code == 0, err
    assert json.loads(out)["sub"] == _claims(token)["sub"]


async def test_the_node_example_refuses_a_tampered_token(
    example: Path, auth: TestClient[Any, Any], auth_server: TestServer, settings: Settings
) -> None:
    token = (await register_and_login(auth, credential="token"))["access_token"]
    code, out, err = await _verify(example, auth_server, settings, _tampered(token))
    assert code == 1
    assert out == ""
    assert "ERR_JWS_SIGNATURE_VERIFICATION_FAILED" in err


async def test_the_node_example_refuses_a_token_for_another_audience(
    example: Path, auth: TestClient[Any, Any], auth_server: TestServer, settings: Settings
) -> None:
    token = (await register_and_login(auth, credential="token"))["access_token"]
    code, _, err = await _verify(example, auth_server, settings, token, audience="another-api")
    assert code == 1
    assert "ERR_JWT_CLAIM_VALIDATION_FAILED" in err
