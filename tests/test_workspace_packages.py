"""Each distributable package installs on its own, with what it declares and nothing more.

Least privilege as packaging, not only as a lint rule: the verify package a
third-party service installs brings no Argon2 and no PostgreSQL driver, and
the services' image (deploy/docker/Dockerfile) installs the services' four
packages without the deploy toolkit, the demo or any test tool. Each test
builds a fresh virtualenv with pip (PyPI for the third-party dependencies).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MEMBERS = ("services/verify", "services/platform", "services/auth", "services/resource")


def _fresh_venv(tmp_path: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    return tmp_path / "venv" / "bin" / "python"


def _pip_install(python: Path, *paths: str) -> None:
    """pip install ``paths`` (relative to the repository) from a copy: a build writes
    ``build/`` and ``*.egg-info`` next to the sources, and the tree stays untouched."""
    copy = python.parent.parent.parent / "src"
    for path in paths:
        shutil.copytree(
            ROOT / path,
            copy / path,
            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
        )
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *paths],
        check=True,
        cwd=copy,
        capture_output=True,
        timeout=600,
    )


def _installed(python: Path) -> set[str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {line.split("==")[0].lower().replace("_", "-") for line in out.splitlines()}


def _run(python: Path, code: str) -> str:
    # -I: nothing from the working tree or the environment; only the venv.
    done = subprocess.run(
        [str(python), "-I", "-c", code], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_the_verify_package_installs_alone_and_verifies_a_token(tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path)
    _pip_install(python, "./services/verify")
    installed = _installed(python)
    assert "tessera-verify" in installed
    assert not {"argon2-cffi", "asyncpg", "tessera-platform", "tessera-auth"} & installed
    # A token signed with HS256 and verified by the installed package, revocations off
    # (no Redis here): signature, issuer, audience and expiry are all checked.
    out = _run(
        python,
        """
import asyncio, time, jwt
from tessera_verify.access_tokens import AccessTokenVerifier
from tessera_verify.clock import SystemClock
from tessera_verify.verification_keys import StaticKeySource, VerificationKey
secret = b"s" * 32
token = jwt.encode(
    {"iss": "https://auth.test", "aud": "api", "sub": "u1", "exp": int(time.time()) + 60,
     "iat": int(time.time()), "jti": "j1", "sid": "s1"},
    secret, algorithm="HS256", headers={"kid": "k1", "typ": "at+jwt"},
)
keys = StaticKeySource([VerificationKey("k1", "HS256", secret)])
verifier = AccessTokenVerifier(keys, issuer="https://auth.test", audience="api",
                               algorithms=("HS256",), clock=SystemClock())
print(asyncio.run(verifier.verify(token)).subject)
""",
    )
    assert out.strip() == "u1"


@pytest.mark.slow
def test_the_service_image_installs_the_services_alone(tmp_path: Path) -> None:
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text(encoding="utf-8")
    joined = dockerfile.replace("\\\n", " ")
    install = re.search(r"pip install --no-compile ([^&]+)&&", joined)
    assert install is not None
    paths = install.group(1).split()
    assert sorted(paths) == sorted(f"./{member}" for member in MEMBERS)
    python = _fresh_venv(tmp_path)
    _pip_install(python, *paths)
    installed = _installed(python)
    assert {"tessera-verify", "tessera-platform", "tessera-auth", "tessera-resource"} <= installed
    assert not {"tessera-stack", "tessera-demo", "trustme", "pytest", "mypy"} & installed
    # The migrations ship as package data, and both services' apps build.
    _run(
        python,
        "import tessera_auth.db, tessera_resource.app\n"
        "assert tessera_auth.db.MIGRATOR.available()\n"
        "assert tessera_resource.app.MIGRATOR.available()\n"
        "tessera_auth.app = __import__('tessera_auth.app').app",
    )


def test_each_package_declares_the_tessera_packages_it_imports() -> None:
    """An import of another workspace package must be a declared dependency."""
    names = {
        "tessera_verify": "tessera-verify",
        "tessera_platform": "tessera-platform",
        "tessera_auth": "tessera-auth",
        "tessera_resource": "tessera-resource",
        "tessera_stack": "tessera-stack",
        "tessera_demo": "tessera-demo",
    }
    for member in (*MEMBERS, "deploy", "demo"):
        project = (ROOT / member / "pyproject.toml").read_text(encoding="utf-8")
        (package,) = re.findall(r'include = \["(tessera_\w+)\*"\]', project)
        imported = set()
        for source in (ROOT / member / package).rglob("*.py"):
            imported |= set(re.findall(r"^(?:from|import) (tessera_\w+)", source.read_text(), re.M))
        needed = {names[name] for name in imported - {package}}
        declared = set(re.findall(r'"(tessera-[a-z]+)"', project))
        assert needed <= declared, (member, needed - declared)
    assert sys.version_info >= (3, 11)
