"""README's "Use a credential" runs as written, and says what it shows.

The ``sh`` block is taken from README.md as it is and run with bash, line by
line as a reader would paste it, from a directory laid out like the
repository's root (every top-level entry linked, the ``tessera`` script
copied so that it runs there), so the stack it starts has a run directory of
its own and a developer's ``.run/`` is never touched. The block uses the
stack's default ports, like the reader's; when another stack holds them the
test is skipped, not run against it.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORTS = (8443, 8080, 8081, 8082, 8083)

#: What the block's answers show, in order (each a fragment of one answer's JSON).
EXPECTED = (
    '"username": "alice"',  # registered
    '"auth_method": "shared_session"',  # row 4: the cookie
    '"error": "credential_not_accepted"',  # row 4 takes no bearer token
    '"auth_method": "jwt"',  # row 5: the token
    '"token_type": "Bearer"',  # refreshed
    '"active": true',  # introspected
    '"revoked"',  # logged out
    '"error": "invalid_token"',  # the token refused after logout
    '"username": "bob"',  # the admin command
)


def quick_start_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Use a credential") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "README's 'Use a credential' has no sh block"
    return match.group(1)


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    if busy := [port for port in DEFAULT_PORTS if _port_in_use(port)]:
        pytest.skip(f"the quick start's default ports are in use: {busy}")
    # The block's `./tessera up` runs bootstrap from the linked directory: the venv must
    # already be current here, or it would be reinstalled from paths that go away.
    subprocess.run([str(ROOT / "deploy/scripts/bootstrap.sh")], cwd=ROOT, check=True, timeout=900)
    for entry in ROOT.iterdir():
        if entry.name not in (".run", ".git", "tessera"):
            (tmp_path / entry.name).symlink_to(entry)
    shutil.copy2(ROOT / "tessera", tmp_path / "tessera")
    script = tmp_path / "quick-start.sh"
    script.write_text("set -euo pipefail\n" + quick_start_block(), encoding="utf-8")
    try:
        done = subprocess.run(
            ["bash", str(script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)},
        )
    finally:
        subprocess.run(
            [str(tmp_path / "tessera"), "down"], cwd=tmp_path, capture_output=True, timeout=120
        )
    assert done.returncode == 0, done.stdout + done.stderr
    position = 0
    for fragment in EXPECTED:
        found = done.stdout.find(fragment, position)
        assert found >= 0, f"{fragment} not in order in:\n{done.stdout}"
        position = found + len(fragment)
