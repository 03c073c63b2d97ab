"""Settings from the environment, validated all at once; dependency checks at start-up."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
import uvloop

from tessera_auth import db
from tessera_auth.settings import ConfigError, Settings, load_settings
from tessera_auth.startup import check_dependencies
from tessera_platform.process_settings import EVENT_LOOPS, MAX_WORKERS, unread_variables
from tessera_platform.serve import new_event_loop
from tessera_stack import free_port
from tessera_verify.env import RecordedEnviron
from tests.conftest import with_changes
from tests.fixtures_infra import throwaway_database

REPO = Path(__file__).resolve().parent.parent

DATABASE_URL = "postgresql://tessera@127.0.0.1:5432/tessera"
REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET_A = "8c1b2f9e6d0a4b7c9e1f3a5b7d9e0f2a4c6e8a0b"
SECRET_B = "f0e1d2c3b4a5968778695a4b3c2d1e0f11223344"

DEVELOPMENT = {"TESSERA_ENV": "development", "DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL}
PRODUCTION = {
    "DATABASE_URL": DATABASE_URL,
    "REDIS_URL": REDIS_URL,
    "TESSERA_ISSUER": "https://auth.example.com",
    "TESSERA_SESSION_HASH_KEY": SECRET_A,
    "TESSERA_KEY_ENCRYPTION_KEY": SECRET_B,
}


def _problems(environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    assert str(caught.value).startswith("invalid configuration:")
    for problem in caught.value.problems:
        assert problem in str(caught.value)
    return caught.value.problems


def _has(problems: list[str], fragment: str) -> bool:
    return any(fragment in problem for problem in problems)


# --- defaults ----------------------------------------------------------------------------


def test_development_works_with_only_database_and_redis_urls() -> None:
    settings = load_settings(DEVELOPMENT)
    assert settings.development
    assert settings.database_url == DATABASE_URL and settings.redis_url == REDIS_URL
    assert settings.issuer == "http://127.0.0.1:8080"
    assert settings.jwt_algorithm == "ES256" and settings.hs256_secret is None
    assert settings.process.migrate_on_start is True
    assert settings.cookie_insecure is False
    assert settings.registration_enabled is True
    assert len(settings.session_hash_key) >= 32 and len(settings.key_encryption_key) >= 32


def test_production_with_a_complete_environment_loads() -> None:
    settings = load_settings(PRODUCTION)
    assert settings.environment == "production"
    assert settings.session_hash_key == SECRET_A.encode()
    assert settings.key_encryption_key == SECRET_B.encode()
    assert settings.process.migrate_on_start is False
    assert settings.argon2.memory_kib == 19 * 1024 and settings.argon2.time_cost == 2


def test_environment_defaults_to_production() -> None:
    assert load_settings(PRODUCTION).environment == "production"
    assert _has(_problems({"DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL}), "ISSUER")


def test_production_with_nothing_lists_every_problem_at_once() -> None:
    problems = _problems({})
    for expected in (
        "DATABASE_URL is required",
        "REDIS_URL is required",
        "TESSERA_ISSUER is required outside development",
        "TESSERA_SESSION_HASH_KEY (or TESSERA_SESSION_HASH_KEY_FILE) is required",
        "TESSERA_KEY_ENCRYPTION_KEY (or TESSERA_KEY_ENCRYPTION_KEY_FILE) is required",
    ):
        assert _has(problems, expected), (expected, problems)


def test_unknown_environment_name_is_a_problem() -> None:
    assert _has(_problems({**PRODUCTION, "TESSERA_ENV": "staging"}), "TESSERA_ENV")


@pytest.mark.parametrize(
    ("name", "value"),
    [("DATABASE_URL", "mysql://db/tessera"), ("REDIS_URL", "http://127.0.0.1:6379")],
)
def test_a_url_with_the_wrong_scheme_is_a_problem(name: str, value: str) -> None:
    assert _has(_problems({**PRODUCTION, name: value}), f"{name} must be a URL with scheme")


def test_plain_http_issuer_is_refused_in_production_only() -> None:
    problems = _problems({**PRODUCTION, "TESSERA_ISSUER": "http://auth.example.com"})
    assert _has(problems, "TESSERA_ISSUER must use https")
    settings = load_settings({**DEVELOPMENT, "TESSERA_ISSUER": "http://auth.example.com/"})
    assert settings.issuer == "http://auth.example.com"


# --- secrets and *_FILE ------------------------------------------------------------------


def test_secrets_are_read_from_files_with_the_trailing_newline_stripped(tmp_path: Path) -> None:
    hash_key, kek = tmp_path / "hash_key", tmp_path / "kek"
    hash_key.write_text(SECRET_B + "\n")
    kek.write_text(SECRET_A + "\n")
    environ = {k: v for k, v in PRODUCTION.items() if not k.endswith("_KEY")}
    settings = load_settings(
        {
            **environ,
            "TESSERA_SESSION_HASH_KEY_FILE": str(hash_key),
            "TESSERA_KEY_ENCRYPTION_KEY_FILE": str(kek),
        }
    )
    assert settings.session_hash_key == SECRET_B.encode()
    assert settings.key_encryption_key == SECRET_A.encode()


def test_any_setting_can_come_from_a_file(tmp_path: Path) -> None:
    url_file = tmp_path / "database_url"
    url_file.write_text("postgresql://from-file@127.0.0.1/tessera\n")
    environ = {k: v for k, v in PRODUCTION.items() if k != "DATABASE_URL"}
    settings = load_settings({**environ, "DATABASE_URL_FILE": str(url_file)})
    assert settings.database_url == "postgresql://from-file@127.0.0.1/tessera"


def test_setting_both_a_secret_and_its_file_is_a_problem(tmp_path: Path) -> None:
    secret_file = tmp_path / "hash_key"
    secret_file.write_text(SECRET_B)
    problems = _problems({**PRODUCTION, "TESSERA_SESSION_HASH_KEY_FILE": str(secret_file)})
    assert _has(problems, "TESSERA_SESSION_HASH_KEY and TESSERA_SESSION_HASH_KEY_FILE are both set")


def test_an_unreadable_secret_file_is_a_problem(tmp_path: Path) -> None:
    environ = {k: v for k, v in PRODUCTION.items() if not k.endswith("_KEY")}
    problems = _problems(
        {
            **environ,
            "TESSERA_SESSION_HASH_KEY_FILE": str(tmp_path / "missing"),
            "TESSERA_KEY_ENCRYPTION_KEY_FILE": str(tmp_path),  # a directory
        }
    )
    assert _has(problems, f"TESSERA_SESSION_HASH_KEY_FILE: cannot read {tmp_path / 'missing'}")
    assert _has(problems, f"TESSERA_KEY_ENCRYPTION_KEY_FILE: cannot read {tmp_path}")


@pytest.mark.parametrize("name", ["TESSERA_SESSION_HASH_KEY", "TESSERA_KEY_ENCRYPTION_KEY"])
def test_a_development_placeholder_secret_is_refused_in_production(name: str) -> None:
    placeholder = load_settings(DEVELOPMENT).session_hash_key.decode()
    assert "dev-only-insecure" in placeholder
    problems = _problems({**PRODUCTION, name: placeholder})
    assert _has(problems, f"{name} is a development placeholder")
    assert load_settings({**DEVELOPMENT, name: placeholder})


@pytest.mark.parametrize("environment", ["production", "development"])
def test_a_secret_shorter_than_32_bytes_is_refused(environment: str) -> None:
    environ = {**PRODUCTION, "TESSERA_ENV": environment, "TESSERA_SESSION_HASH_KEY": "x" * 31}
    assert _has(_problems(environ), "TESSERA_SESSION_HASH_KEY must be at least 32 bytes")


def test_insecure_cookies_are_refused_in_production_and_allowed_in_development() -> None:
    problems = _problems({**PRODUCTION, "TESSERA_COOKIE_INSECURE": "1"})
    assert _has(problems, "TESSERA_COOKIE_INSECURE is only allowed with TESSERA_ENV=development")
    assert load_settings({**DEVELOPMENT, "TESSERA_COOKIE_INSECURE": "true"}).cookie_insecure


# --- numbers, flags, ports ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TESSERA_ACCESS_TOKEN_TTL", "five minutes", "is not an integer"),
        ("TESSERA_ACCESS_TOKEN_TTL", "1.5", "is not an integer"),
        ("TESSERA_ACCESS_TOKEN_TTL", "0", "must be positive"),
        ("TESSERA_REFRESH_TOKEN_TTL", "-60", "must be positive"),
        ("TESSERA_MAX_BODY_BYTES", "16k", "is not an integer"),
        ("TESSERA_DB_POOL_MAX", "0", "must be positive"),
        ("TESSERA_REGISTRATION_ENABLED", "maybe", "is not a boolean"),
        ("TESSERA_MIGRATE_ON_START", "2", "is not a boolean"),
        ("TESSERA_PORT", "http", "is not a port number"),
        ("TESSERA_PORT", "0", "must be 1-65535"),
        ("TESSERA_PORT", "65536", "must be 1-65535"),
        ("TESSERA_DEPENDENCY_TIMEOUT", "soon", "is not a number"),
        ("TESSERA_DEPENDENCY_TIMEOUT", "0", "must be positive and finite"),
        ("TESSERA_DEPENDENCY_TIMEOUT", "-1", "must be positive and finite"),
        ("TESSERA_DEPENDENCY_TIMEOUT", "nan", "must be positive and finite"),
        ("TESSERA_DEPENDENCY_TIMEOUT", "inf", "must be positive and finite"),
        ("TESSERA_TRUSTED_PROXIES", "10.0.0.0/8,not-a-network", "is not a comma-separated"),
        ("TESSERA_LOG_LEVEL", "chatty", "is not a log level"),
    ],
)
def test_a_malformed_value_is_a_problem_naming_the_variable(
    name: str, value: str, expected: str
) -> None:
    problems = _problems({**PRODUCTION, name: value})
    assert any(name in problem and expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False)]
)
def test_booleans_accept_the_usual_spellings(value: str, expected: bool) -> None:
    settings = load_settings({**PRODUCTION, "TESSERA_REGISTRATION_ENABLED": value})
    assert settings.registration_enabled is expected


def test_trusted_proxies_parse_into_networks() -> None:
    settings = load_settings({**PRODUCTION, "TESSERA_TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    assert [str(network) for network in settings.trusted_proxies] == ["10.0.0.0/8", "::1/128"]


def test_several_malformed_values_are_all_reported_together() -> None:
    problems = _problems(
        {
            **PRODUCTION,
            "TESSERA_PORT": "99999",
            "TESSERA_ACCESS_TOKEN_TTL": "x",
            "TESSERA_REGISTRATION_ENABLED": "perhaps",
        }
    )
    assert len(problems) == 3, problems


# --- JWT algorithm -----------------------------------------------------------------------


def test_hs256_requires_a_secret_in_production() -> None:
    problems = _problems({**PRODUCTION, "TESSERA_JWT_ALG": "HS256"})
    assert _has(problems, "TESSERA_JWT_HS256_SECRET (or TESSERA_JWT_HS256_SECRET_FILE)")


def test_hs256_with_a_long_secret_loads() -> None:
    secret = secrets.token_urlsafe(48)
    settings = load_settings(
        {**PRODUCTION, "TESSERA_JWT_ALG": "HS256", "TESSERA_JWT_HS256_SECRET": secret}
    )
    assert settings.jwt_algorithm == "HS256"
    assert settings.hs256_secret == secret.encode()


def test_hs256_secret_is_refused_when_the_algorithm_is_not_hs256() -> None:
    problems = _problems({**PRODUCTION, "TESSERA_JWT_HS256_SECRET": secrets.token_urlsafe(48)})
    assert _has(problems, "TESSERA_JWT_HS256_SECRET is set but TESSERA_JWT_ALG is not HS256")


@pytest.mark.parametrize("algorithm", ["none", "HS512", "es256", "PS256"])
def test_an_unknown_jwt_algorithm_is_a_problem(algorithm: str) -> None:
    problems = _problems({**PRODUCTION, "TESSERA_JWT_ALG": algorithm})
    assert _has(problems, "TESSERA_JWT_ALG must be one of")


# --- sessions and Argon2 -----------------------------------------------------------------


def test_an_idle_timeout_above_the_absolute_timeout_is_a_problem() -> None:
    problems = _problems(
        {
            **PRODUCTION,
            "TESSERA_SESSION_IDLE_TIMEOUT": "7200",
            "TESSERA_SESSION_ABSOLUTE_TIMEOUT": "3600",
        }
    )
    assert _has(problems, "TESSERA_SESSION_IDLE_TIMEOUT must not exceed")


def test_a_touch_interval_at_or_above_the_idle_timeout_is_a_problem() -> None:
    problems = _problems(
        {
            **PRODUCTION,
            "TESSERA_SESSION_IDLE_TIMEOUT": "600",
            "TESSERA_SESSION_TOUCH_INTERVAL": "600",
        }
    )
    assert _has(problems, "TESSERA_SESSION_TOUCH_INTERVAL must be below the idle timeout")


@pytest.mark.parametrize(
    ("name", "value"),
    [("TESSERA_ARGON2_MEMORY_KIB", "8192"), ("TESSERA_ARGON2_TIME_COST", "1")],
)
def test_argon2_below_the_owasp_minimum_is_refused_in_production_only(
    name: str, value: str
) -> None:
    assert _has(_problems({**PRODUCTION, name: value}), "below OWASP's minimum")
    settings = load_settings({**DEVELOPMENT, name: value})
    assert settings.argon2.memory_kib * settings.argon2.time_cost < 19 * 1024 * 2


# --- dependency checks -------------------------------------------------------------------


def _unreachable(settings: Settings) -> Settings:
    return replace(
        settings,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        database_url=f"postgresql://tessera@127.0.0.1:{free_port()}/tessera",
    )


async def test_check_dependencies_lists_both_unreachable_redis_and_postgresql(
    settings: Settings,
) -> None:
    problems = await check_dependencies(_unreachable(settings))
    assert len(problems) == 2, problems
    assert problems[0].startswith("REDIS_URL: cannot reach Redis")
    assert problems[1].startswith("DATABASE_URL: cannot reach PostgreSQL")


async def test_check_dependencies_finds_no_problem_with_the_real_servers_once_migrated(
    settings: Settings,
) -> None:
    await _migrate(settings.database_url)
    assert await check_dependencies(with_changes(settings, migrate_on_start=False)) == []


@pytest.fixture
def empty_database_url(database_url: str) -> Iterator[str]:
    """A brand-new database with no tables, dropped after the test."""
    with throwaway_database(database_url, "tessera_empty") as url:
        yield url


async def test_check_dependencies_reports_pending_migrations_unless_migrating_on_start(
    settings: Settings, empty_database_url: str
) -> None:
    fresh = replace(settings, database_url=empty_database_url)
    problems = await check_dependencies(with_changes(fresh, migrate_on_start=False))
    assert len(problems) == 1, problems
    assert problems[0].startswith("DATABASE_URL: migrations pending (0001_users")
    assert "python -m tessera_auth migrate" in problems[0]
    assert await check_dependencies(with_changes(fresh, migrate_on_start=True)) == []


# --- python -m tessera_auth check --------------------------------------------------------


def _run_check(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", "tessera_auth", "check"],
        env={**keep, **environ},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_command_with_a_bad_environment_exits_2_and_prints_every_problem() -> None:
    result = _run_check({"TESSERA_PORT": "http", "TESSERA_COOKIE_INSECURE": "1"})
    assert result.returncode == 2, result
    assert result.stdout == ""
    for expected in (
        "invalid configuration",
        "DATABASE_URL is required",
        "REDIS_URL is required",
        "TESSERA_PORT='http' is not a port number",
        "TESSERA_COOKIE_INSECURE is only allowed with TESSERA_ENV=development",
        "TESSERA_SESSION_HASH_KEY (or TESSERA_SESSION_HASH_KEY_FILE) is required",
    ):
        assert expected in result.stderr, result.stderr


def test_check_command_with_unreachable_dependencies_exits_3_and_names_both() -> None:
    result = _run_check(
        {
            **DEVELOPMENT,
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "DATABASE_URL": f"postgresql://tessera@127.0.0.1:{free_port()}/tessera",
        }
    )
    assert result.returncode == 3, result
    assert "cannot reach Redis" in result.stderr
    assert "cannot reach PostgreSQL" in result.stderr


async def test_check_command_with_the_real_servers_exits_0(
    settings: Settings, redis_url: str
) -> None:
    await _migrate(settings.database_url)
    environ = {**DEVELOPMENT, "DATABASE_URL": settings.database_url, "REDIS_URL": redis_url}
    result = await asyncio.to_thread(_run_check, environ)
    assert result.returncode == 0, result.stderr
    assert "configuration and dependencies: ok" in result.stdout


async def _migrate(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await db.migrate(connection)
    finally:
        await connection.close()


@pytest.mark.parametrize(
    "issuer",
    [
        "https://auth.example.com",
        "https://auth.example.com/",
        "http://auth.example.com",
        "https://auth.example.com/?tenant=a",
        "ftp://auth.example.com",
        "https://",
        "auth.example.com",
    ],
)
@pytest.mark.parametrize("environment", ["production", "development"])
def test_the_auth_service_and_the_replicas_judge_an_issuer_alike(
    issuer: str, environment: str
) -> None:
    from tessera_resource.settings import ConfigError as ResourceConfigError
    from tessera_resource.settings import load_settings as load_resource_settings

    base = {**(PRODUCTION if environment == "production" else DEVELOPMENT)}
    environ = {**base, "TESSERA_ISSUER": issuer, "TESSERA_AUTH_URL": "http://auth:8080"}
    verdicts = []
    for load, error in (
        (lambda env: load_settings(env).issuer, ConfigError),
        (lambda env: load_resource_settings(env).verify.issuer, ResourceConfigError),
    ):
        try:
            verdicts.append(("ok", load(environ)))
        except error as exc:
            verdicts.append(("refused", "; ".join(p for p in exc.problems if "ISSUER" in p)))
    assert verdicts[0] == verdicts[1]
    if verdicts[0][0] == "ok":
        assert not verdicts[0][1].endswith("/")


# --- TESSERA_* variables nothing reads ----------------------------------------------------


def _unread(load: Callable[[Mapping[str, str]], object], environ: dict[str, str]) -> list[str]:
    recorded = RecordedEnviron(environ)
    load(recorded)
    return unread_variables(recorded)


def test_a_complete_auth_environment_leaves_no_variable_unread(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(SECRET_A)
    environ = {
        **PRODUCTION,
        "TESSERA_SESSION_HASH_KEY_FILE": str(tmp_path / "key"),
        "TESSERA_ARGON2_MEMORY_KIB": "65536",
        "TESSERA_LOG_FORMAT": "text",
        "PATH": "/usr/bin",
        "TESSERA_PORT": "8081",
    }
    del environ["TESSERA_SESSION_HASH_KEY"]
    assert _unread(load_settings, environ) == []


def test_a_misspelt_auth_variable_is_named_with_the_one_it_resembles() -> None:
    environ = {**DEVELOPMENT, "TESSERA_SESION_IDLE_TIMEOUT": "60", "TESSERA_ACCES_TOKEN_TTL": "60"}
    assert _unread(load_settings, environ) == [
        "TESSERA_ACCES_TOKEN_TTL is set but this service does not read it; "
        "did you mean TESSERA_ACCESS_TOKEN_TTL?",
        "TESSERA_SESION_IDLE_TIMEOUT is set but this service does not read it; "
        "did you mean TESSERA_SESSION_IDLE_TIMEOUT?",
    ]


def test_a_misspelt_secret_file_variable_is_named_with_the_file_form() -> None:
    environ = {**DEVELOPMENT, "TESSERA_KEY_ENCRYPTION_KEY_FLIE": "/run/secrets/kek"}
    (warning,) = _unread(load_settings, environ)
    assert warning.endswith("did you mean TESSERA_KEY_ENCRYPTION_KEY_FILE?")


def test_a_replica_names_a_misspelt_variable_and_one_meant_for_the_auth_service() -> None:
    from tessera_resource.settings import load_settings as load_resource_settings

    environ = {
        **DEVELOPMENT,
        "TESSERA_AUTH_URL": "http://auth:8080",
        "TESSERA_AUTH_METHOD": "jwt",
        "TESSERA_REGISTRATION_ENABLED": "0",
    }
    unread = _unread(load_resource_settings, environ)
    assert unread[0] == (
        "TESSERA_AUTH_METHOD is set but this service does not read it; "
        "did you mean TESSERA_AUTH_METHODS?"
    )
    assert unread[1].startswith("TESSERA_REGISTRATION_ENABLED is set but this service does not")
    assert len(unread) == 2
    # Its methods decide what it reads: a forward-auth secret on a JWT-only replica does nothing.
    forward = {**environ, "TESSERA_AUTH_METHODS": "jwt", "TESSERA_FORWARD_AUTH_SECRET": SECRET_A}
    assert "TESSERA_FORWARD_AUTH_SECRET" in " ".join(_unread(load_resource_settings, forward))


def test_check_logs_a_warning_for_a_misspelt_variable_and_otherwise_runs_as_before() -> None:
    result = _run_check(
        {
            **DEVELOPMENT,
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "DATABASE_URL": f"postgresql://tessera@127.0.0.1:{free_port()}/tessera",
            "TESSERA_JWT_ALGO": "EdDSA",
        }
    )
    assert result.returncode == 3, result
    (warning,) = [
        json.loads(line) for line in result.stderr.splitlines() if "TESSERA_JWT_ALGO" in line
    ]
    assert warning["level"] == "warning"
    assert warning["msg"] == (
        "TESSERA_JWT_ALGO is set but this service does not read it; did you mean TESSERA_JWT_ALG?"
    )


def test_an_invalid_configuration_also_names_the_variables_nothing_read() -> None:
    result = _run_check({"TESSERA_ENV": "development", "TESSERA_REDIS_URL": REDIS_URL})
    assert result.returncode == 2, result
    assert "REDIS_URL is required" in result.stderr
    assert "tessera-auth: warning: TESSERA_REDIS_URL is set but this service" in result.stderr


def test_a_malformed_secret_list_is_named_in_the_problem_but_never_repeated() -> None:
    secret = "resource-server:" + "s3cr3t" * 2  # too short a secret: malformed
    with pytest.raises(ConfigError) as refused:
        load_settings({**DEVELOPMENT, "TESSERA_INTROSPECTION_CLIENTS": secret})
    (problem,) = [p for p in refused.value.problems if "TESSERA_INTROSPECTION_CLIENTS" in p]
    assert "s3cr3t" not in problem


@pytest.mark.parametrize(
    "changes",
    [
        {"TESSERA_AUTH_METHODS": "forward", "TESSERA_TRUSTED_PROXIES": "127.0.0.1/32"},
        {
            "TESSERA_AUTH_METHODS": "forward",
            "TESSERA_TRUSTED_PROXIES": "127.0.0.1/32",
            "TESSERA_FORWARD_AUTH_SECRET": "short",
        },
        {"TESSERA_AUTH_METHODS": "jwt", "TESSERA_JWT_ALG": "none"},
    ],
    ids=["forward secret missing", "forward secret short", "unknown algorithm"],
)
def test_a_replica_with_a_bad_method_setting_is_a_configuration_problem_not_a_crash(
    changes: dict[str, str],
) -> None:
    from tessera_resource.settings import ConfigError as ResourceConfigError
    from tessera_resource.settings import load_settings as load_resource_settings

    production = {
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "TESSERA_AUTH_URL": "http://auth:8080",
        "TESSERA_ISSUER": "https://auth.example.com",
        "TESSERA_REPLICA_ID": "r1",
    }
    with pytest.raises(ResourceConfigError) as refused:
        load_resource_settings({**production, **changes})
    assert refused.value.problems


# --- the event loop ------------------------------------------------------------------------


def test_the_event_loop_is_uvloop_unless_asyncio_is_asked_for() -> None:
    assert load_settings(DEVELOPMENT).process.event_loop == "uvloop"
    chosen = load_settings({**DEVELOPMENT, "TESSERA_EVENT_LOOP": "ASYNCIO"})
    assert chosen.process.event_loop == "asyncio"
    assert _has(
        _problems({**DEVELOPMENT, "TESSERA_EVENT_LOOP": "trio"}),
        "TESSERA_EVENT_LOOP must be 'asyncio' or 'uvloop'",
    )


@pytest.mark.parametrize("name", EVENT_LOOPS)
def test_each_event_loop_runs_a_coroutine(name: str) -> None:
    loop = new_event_loop(name)
    try:
        assert loop.run_until_complete(asyncio.sleep(0, result="ran")) == "ran"
        assert isinstance(loop, uvloop.Loop) is (name == "uvloop")
    finally:
        loop.close()
    with pytest.raises(ValueError, match="unknown event loop"):
        new_event_loop("trio")


# --- worker processes ----------------------------------------------------------------------


def test_one_worker_unless_more_are_asked_for() -> None:
    assert load_settings(DEVELOPMENT).process.workers == 1
    assert load_settings({**DEVELOPMENT, "TESSERA_WORKERS": "4"}).process.workers == 4


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", str(MAX_WORKERS + 1)])
def test_a_worker_count_out_of_range_or_not_a_number_is_a_problem(value: str) -> None:
    assert _has(_problems({**DEVELOPMENT, "TESSERA_WORKERS": value}), "TESSERA_WORKERS")


def test_a_replica_keeping_sessions_in_its_memory_refuses_more_than_one_worker() -> None:
    from tessera_resource.settings import ConfigError as ResourceConfigError
    from tessera_resource.settings import load_settings as load_resource_settings

    replica = {**DEVELOPMENT, "TESSERA_AUTH_URL": "http://auth:8080", "TESSERA_WORKERS": "2"}
    shared = load_resource_settings({**replica, "TESSERA_AUTH_METHODS": "jwt,shared_session"})
    assert shared.process.workers == 2
    with pytest.raises(ResourceConfigError) as refused:
        load_resource_settings({**replica, "TESSERA_AUTH_METHODS": "jwt,local_session"})
    assert _has(refused.value.problems, "TESSERA_WORKERS=2 cannot serve local_session")
    one = load_resource_settings(
        {**replica, "TESSERA_WORKERS": "1", "TESSERA_AUTH_METHODS": "local_session"}
    )
    assert one.process.workers == 1
