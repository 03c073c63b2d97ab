"""The bench's compiled replica (bench/compiled.py): mypyc builds the hot modules, a process
started on the build runs them, and they pass the verifier's and the replica's own tests
as compiled code (the alternative the bench measures is the same checks, not a weaker
copy). Fails, not skips, where mypyc cannot build (no C compiler or Python headers): CI
would otherwise pass without it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench import compiled

REPO = Path(__file__).resolve().parents[1]
#: The checks every compiled credential path must still pass: tokens, cookies, keys, the
#: client address, and the replica itself (JWTs, revocation at logout, shared and local
#: sessions, forwarded identities, anonymous requests) beside a real auth service.
VERIFIER_TESTS = (
    "tests/test_access_token_verification.py",
    "tests/test_client_ip.py",
    "tests/test_cookies.py",
    "tests/test_duplicate_cookies.py",
    "tests/test_jwks_cache.py",
    "tests/test_jwt_canonical.py",
    "tests/test_resource.py",
)
HOT = [path.removesuffix(".py").replace("/", ".") for path in compiled.HOT_MODULES]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = compiled.build(tmp_path_factory.mktemp("compiled") / "build")
    assert result.problem == ""
    assert result.path is not None
    return result.path


def _env(build: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            part for part in (str(build), str(REPO), os.environ.get("PYTHONPATH", "")) if part
        ),
    }


def test_every_hot_module_is_compiled_and_imported_as_machine_code(build: Path) -> None:
    script = (
        "import importlib, sys\n"
        "import tessera_resource.app\n"
        f"for name in {HOT!r}:\n"
        "    print(importlib.import_module(name).__file__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=_env(build),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    files = result.stdout.split()
    assert len(files) == len(HOT)
    for file in files:
        assert file.startswith(str(build)) and file.endswith(".so"), file


def test_a_process_on_the_build_is_seen_running_it_and_others_are_not(build: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, tessera_resource.app; sys.stdin.read()"],
        env=_env(build),
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not compiled.loaded_from(proc.pid, build) and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.1)
        assert compiled.loaded_from(proc.pid, build)
    finally:
        try:
            proc.communicate(b"", timeout=30)
        finally:
            proc.kill()
    assert not compiled.loaded_from(os.getpid(), build)


def test_the_compiled_modules_pass_the_verifiers_and_the_replicas_own_tests(build: Path) -> None:
    # The compiled modules are imported first, so the tests run on them (pytest's own
    # changes to sys.path come later and cannot swap them), and checked again after.
    script = (
        "import importlib, sys, pytest\n"
        "import tessera_resource.app\n"
        f"hot = {HOT!r}\n"
        "for name in hot:\n"
        "    importlib.import_module(name)\n"
        "code = pytest.main(sys.argv[1:])\n"
        "for name in hot:\n"
        "    assert sys.modules[name].__file__.endswith('.so'), sys.modules[name].__file__\n"
        "print(f'{len(hot)} compiled modules tested')\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "-q", "-p", "no:cacheprovider", *VERIFIER_TESTS],
        cwd=REPO,
        env=_env(build),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    assert f"{len(HOT)} compiled modules tested" in result.stdout
