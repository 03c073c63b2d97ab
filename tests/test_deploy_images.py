"""The Dockerfiles in deploy/docker/, checked without a Docker engine: hadolint
passes, images run as a non-root user, have a health check and pinned bases,
and the build context lets in what they copy and nothing else of note."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER_DIR.glob("*Dockerfile"))
# name:1.2.3-variant (a version with at least major.minor), optionally @sha256:...
_PINNED = re.compile(r"^[\w./-]+:v?\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def test_there_is_an_image_for_the_services_and_one_for_nginx() -> None:
    assert {path.name for path in DOCKERFILES} == {"Dockerfile", "nginx.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_images_are_pinned_run_as_non_root_and_check_their_health(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    stages = [args.split()[0] for word, args in instructions if word == "FROM"]
    assert stages
    for image in stages:
        assert _PINNED.match(image), f"{image} is not pinned to a version"
    final = instructions[max(i for i, (word, _) in enumerate(instructions) if word == "FROM") :]
    users = [args for word, args in final if word == "USER"]
    assert users, "the final stage runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: a numeric non-root uid"
    assert any(word == "HEALTHCHECK" for word, _ in final)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore ``patterns`` exclude ``path`` (last match wins)."""
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!").rstrip("/")
        candidates = [body, body.removeprefix("**/")]
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, c) or p == c for c in candidates for p in prefixes) or any(
            fnmatch.fnmatch(part, body.removeprefix("**/")) for part in parts
        ):
            excluded = not negated
    return excluded


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_the_build_context_holds_what_the_image_copies_and_no_local_state(
    dockerfile: Path,
) -> None:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    patterns = [
        line.strip()
        for line in ignore.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        source.rstrip("/")
        for word, args in _instructions(dockerfile)
        if word == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is kept out of the build context"
    # The stack's data (PostgreSQL owned by another user), the virtualenv,
    # secrets for compose and git never reach the builder.
    for local in (".run/data", ".venv/bin/python", ".secrets/tls_key.pem", ".git/config"):
        assert _ignored(local, patterns), local
    assert _ignored("services/auth/tessera_auth/__pycache__/app.cpython-311.pyc", patterns)


def test_compose_pins_every_image_it_does_not_build() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))["services"]
    built = {service["image"] for service in services.values() if "build" in service}
    for name, service in services.items():
        image = service["image"]
        if image not in built:
            assert _PINNED.match(image), f"{name}: {image} is not pinned to a version"
    for name, service in services.items():
        if "build" in service:
            dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile in DOCKERFILES, name
