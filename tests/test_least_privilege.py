"""Least privilege: the whole system works on per-role users, and a replica's can mint nothing.

A real Redis loads the ACL file the local stack renders
(``deploy/roles/redis-users.acl.template`` via :mod:`tessera_stack.redis_acl`); the
auth service logs in as ``tessera-auth``, a replica as ``tessera-replica``,
and the administrator (``default``) only watches ``ACL LOG``. A real
PostgreSQL with passwords gives the replicas a role of their own, as the local
stack does, which cannot read or write a user (and so cannot set a password).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.exceptions
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from tessera_auth.db import MIGRATOR as AUTH_MIGRATOR
from tessera_platform.pg_migrations import migrate_database
from tessera_resource.app import MIGRATOR as RESOURCE_MIGRATOR
from tessera_resource.settings import load_settings as load_resource_settings
from tessera_stack import redis_acl
from tessera_stack.servers import PostgresServer, RedisServer
from tessera_stack.state import REPLICA_DB_ROLE
from tessera_verify import redis_layout
from tessera_verify.clock import ManualClock
from tessera_verify.principal import AuthMethod
from tessera_verify.sessions import SESSION_COOKIE
from tessera_verify.verify_config import ForwardConfig, JwtConfig, SharedSessionConfig

from .conftest import AuthClientFactory, ResourceFactory, register_and_login
from .fixtures_infra import running

Client = TestClient[Any, Any]


@dataclass(frozen=True)
class RoleUrls:
    admin: str
    auth: str
    replica: str


@pytest.fixture(scope="module")
def role_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoleUrls]:
    """A Redis with the stack's users, each with a fresh password."""
    base = tmp_path_factory.mktemp("redis-roles")
    passwords = {user: secrets.token_urlsafe(24) for user in redis_acl.ROLES}
    acl_file = base / "users.acl"
    acl_file.write_text(redis_acl.render_acl(passwords))
    server = RedisServer(base, acl_file=acl_file, admin_password=passwords[redis_acl.ADMIN])
    with running(server):
        yield RoleUrls(
            admin=server.url,
            auth=redis_acl.role_url(server.url, redis_acl.AUTH_USER, passwords["tessera-auth"]),
            replica=redis_acl.role_url(
                server.url, redis_acl.REPLICA_USER, passwords["tessera-replica"]
            ),
        )


@pytest.fixture
async def admin(role_urls: RoleUrls) -> AsyncIterator[Redis]:
    client = Redis.from_url(role_urls.admin)
    await client.flushall()
    await client.acl_log_reset()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def as_replica(role_urls: RoleUrls) -> AsyncIterator[Redis]:
    client = Redis.from_url(role_urls.replica)
    try:
        yield client
    finally:
        await client.aclose()


async def _refused_soon(replica: Client, headers: dict[str, str]) -> None:
    """The replica refuses ``headers`` once the revocation feed has reached it (bounded wait)."""
    for _ in range(500):
        if (await replica.get("/api/me", headers=headers)).status == 401:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the replica still accepts a logged-out credential")


async def test_the_acl_file_leaves_no_password_in_clear(tmp_path: Path) -> None:
    passwords = {user: f"pw-{secrets.token_hex(8)}" for user in redis_acl.ROLES}
    text = redis_acl.render_acl(passwords)
    assert all(password not in text for password in passwords.values())
    assert len(text.splitlines()) == len(redis_acl.ROLES)
    with pytest.raises(ValueError, match="no password for tessera-replica"):
        redis_acl.render_acl({redis_acl.ADMIN: "a", redis_acl.AUTH_USER: "b"})


async def test_the_whole_credential_lifecycle_runs_on_the_role_users(
    make_auth_client: AuthClientFactory,
    make_replica: ResourceFactory,
    role_urls: RoleUrls,
    admin: Redis,
    clock: ManualClock,
) -> None:
    auth = await make_auth_client(redis_url=role_urls.auth)
    replica = await make_replica(
        redis_url=role_urls.replica, auth_methods=(AuthMethod.JWT, AuthMethod.SHARED_SESSION)
    )
    user = await register_and_login(auth)
    login = await auth.post(
        "/auth/login",
        json={"username": user["user"]["username"], "password": user["password"]},
    )
    cookie = {"Cookie": f"{SESSION_COOKIE}={login.cookies[SESSION_COOKIE].value}"}
    assert (await replica.get("/api/me", headers=cookie)).status == 200
    clock.advance(120)  # past the touch interval: the replica moves the idle deadline
    assert (await replica.get("/api/me", headers=cookie)).status == 200
    token = await register_and_login(auth, credential="token")
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert (await replica.get("/api/me", headers=bearer)).status == 200
    refreshed = await auth.post(
        "/auth/token",
        json={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
    )
    assert refreshed.status == 200, await refreshed.text()
    assert (await auth.post("/auth/logout", headers=cookie)).status == 200
    await _refused_soon(replica, cookie)
    assert (await auth.post("/auth/logout", headers=bearer)).status == 200
    await _refused_soon(replica, bearer)
    # Nothing any service did was refused: the rule set is what they need.
    assert await admin.acl_log() == []


_VICTIM_SESSION = redis_layout.session("a" * 64)
_REVOKED_USERS = redis_layout.revocations("user")
#: What a replica's Redis user is refused: every way to make or revive a credential.
_FORBIDDEN: dict[str, tuple[str, ...]] = {
    "mint a session": ("SET", redis_layout.session("b" * 64), "{}"),
    "rewrite whose a session is": ("SET", _VICTIM_SESSION, '{"user_id": "me"}', "XX"),
    "write a refresh token": ("HSET", redis_layout.refresh_token("f" * 16, "d"), "user_id", "u"),
    "lift a user's revocation": ("HDEL", _REVOKED_USERS, "victim"),
    "forget the revocation plane": ("DEL", redis_layout.revocation_generation()),
    "fake the plane's marker": ("SET", redis_layout.revocation_generation(), "fake"),
    "publish on the feed": ("PUBLISH", redis_layout.revocation_feed(), "1 x []"),
    "delete a session": ("DEL", _VICTIM_SESSION),
    "run a script": ("EVAL", "return redis.call('SET', KEYS[1], '1')", "1", _VICTIM_SESSION),
    "reach another key": ("GET", "other:key"),
    "flush": ("FLUSHALL",),
    "list keys": ("KEYS", "*"),
    "reconfigure": ("CONFIG", "SET", "appendonly", "no"),
    "grant itself more": ("ACL", "SETUSER", "tessera-replica", "+@all"),
}


@pytest.mark.parametrize("what", sorted(_FORBIDDEN))
async def test_a_replicas_redis_user_can_mint_or_unrevoke_nothing(
    as_replica: Redis, admin: Redis, what: str
) -> None:
    await admin.set(_VICTIM_SESSION, b'{"user_id": "victim"}', px=60_000)
    await admin.hset(_REVOKED_USERS, "victim", "1 2")
    with pytest.raises(redis.exceptions.NoPermissionError):
        await as_replica.execute_command(*_FORBIDDEN[what])
    assert await as_replica.get(_VICTIM_SESSION) == b'{"user_id": "victim"}'
    assert await admin.hget(_REVOKED_USERS, "victim") == b"1 2"
    assert await admin.dbsize() == 2


async def test_what_a_replicas_redis_user_may_write_creates_nothing(
    as_replica: Redis, admin: Redis
) -> None:
    missing = redis_layout.session("c" * 64)
    assert await as_replica.pexpireat(missing, int((time.time() + 600) * 1000)) is False
    assert await admin.exists(missing) == 0


def test_a_jwt_only_replica_holds_no_session_key() -> None:
    base = {
        "DATABASE_URL": "postgresql://replica@db/tessera",
        "REDIS_URL": "redis://tessera-replica:pw@redis:6379/0",
        "TESSERA_AUTH_URL": "http://auth:8080",
        "TESSERA_ISSUER": "https://tessera.example",
        "TESSERA_REPLICA_ID": "r1",
    }
    jwt_only = load_resource_settings({**base, "TESSERA_AUTH_METHODS": "jwt"}).verify
    assert [type(method) for method in jwt_only.methods] == [JwtConfig]
    jwt = jwt_only.method(JwtConfig)
    assert jwt is not None and jwt.hs256_secret is None
    local = load_resource_settings({**base, "TESSERA_AUTH_METHODS": "jwt,local_session"}).verify
    # in-process sessions use a key of the process's own
    assert local.method(SharedSessionConfig) is None and local.method(ForwardConfig) is None
    with pytest.raises(Exception, match="TESSERA_SESSION_HASH_KEY"):
        load_resource_settings({**base, "TESSERA_AUTH_METHODS": "shared_session"})


# -- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_roles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL as the local stack runs it: passwords, and the replicas' own role."""
    # A short base directory: the unix socket that sets the passwords lives in it.
    base = Path(tempfile.mkdtemp(prefix="pgr-", dir="/tmp"))
    server = PostgresServer(
        base,
        password=secrets.token_urlsafe(24),
        roles={REPLICA_DB_ROLE: secrets.token_urlsafe(24)},
    )
    try:
        with running(server):
            asyncio.run(migrate_database(server.url, AUTH_MIGRATOR))
            asyncio.run(migrate_database(server.role_url(REPLICA_DB_ROLE), RESOURCE_MIGRATOR))
            yield server
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT password_hash FROM public.users",
        "UPDATE public.users SET password_hash = 'known'",
        "INSERT INTO public.users (id, username, password_hash) VALUES (gen_random_uuid(), '', '')",
        "DELETE FROM public.revocations",
        "SELECT * FROM public.signing_keys",
        "CREATE TABLE public.planted (a int)",
    ],
)
async def test_the_replicas_database_role_cannot_touch_the_auth_services_tables(
    postgres_roles: PostgresServer, statement: str
) -> None:
    connection = await asyncpg.connect(postgres_roles.role_url(REPLICA_DB_ROLE))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(statement)
    finally:
        await connection.close()


async def test_the_replicas_database_role_keeps_its_own_forum(
    postgres_roles: PostgresServer,
) -> None:
    connection = await asyncpg.connect(postgres_roles.role_url(REPLICA_DB_ROLE))
    try:
        assert await connection.fetchval("SHOW search_path") == REPLICA_DB_ROLE
        await connection.execute(
            "INSERT INTO comments (user_id, body, served_by, created_at) "
            "VALUES ('u1', 'hello', 'r1', now())"
        )
        assert await connection.fetchval("SELECT count(*) FROM comments") >= 1
    finally:
        await connection.close()


async def test_tcp_logins_need_the_password(postgres_roles: PostgresServer) -> None:
    parts = urlsplit(postgres_roles.url)
    without = parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}").geturl()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(without)
