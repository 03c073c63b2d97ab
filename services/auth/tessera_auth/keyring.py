"""Signing keys: stored encrypted in PostgreSQL, shared by every auth replica, rotated.

Life cycle of a key (at most one ``active`` key per algorithm)::

    published --lead time--> active --successor activated--> inactive --tokens expired--> retired

``published``
    In the JWKS, not signing yet, for at least the publish lead time. The lead
    time covers every auth replica's next reload (after which its JWKS lists
    the key) plus the verifiers' minimum JWKS refetch interval, so when the
    first token names the key, every verifier either has it already or is
    allowed to refetch the JWKS on the unknown ``kid``.
``active``
    Signs new tokens.
``inactive``
    Verify-only, still in the JWKS, until every token it can have signed has
    expired: other replicas may keep signing with it until their next reload,
    and a token lives ``access_token_ttl`` after that (plus a leeway for clock
    skew between hosts).
``retired``
    Out of the JWKS; the row stays as a record.

Every state change is one PostgreSQL transaction under an advisory lock, so
several replicas running the schedule at once make one change, not several.
Decisions take ``now`` from the injected clock. The HS256 shared-secret mode
has no key rotation: its secret comes from the configuration, not from here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from tessera_verify.verification_keys import StaticKeySource, VerificationKey, shared_secret_kid

from .key_material import new_encrypted_key
from .key_schedule import KeyState, KeyTimes, RotationPolicy, Step, next_change, plan
from .settings import Settings

log = logging.getLogger(__name__)

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

#: How long a process waits for another to finish making or rotating a key.
KEY_LOCK_TIMEOUT = 60.0
_KEY_LOCK_ID = 0x7E55E7B


class KeyRotationUnsupported(Exception):
    """Rotation was asked for in the HS256 shared-secret mode."""

    def __init__(self) -> None:
        super().__init__(
            "key rotation is not available in the HS256 shared-secret mode: the secret comes "
            "from TESSERA_JWT_HS256_SECRET, not from the key ring. To change it, deploy a new "
            "secret to the auth service and every verifier at once (tokens signed with the "
            "old secret are refused from then on), or switch to an asymmetric TESSERA_JWT_ALG."
        )


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_key: Any  # a cryptography private key, or the HMAC secret (bytes)


@dataclass(frozen=True)
class KeyChange:
    """A key that moved to ``state``."""

    kid: str
    state: KeyState


@dataclass(frozen=True)
class Rotation:
    """The outcome of :meth:`KeyRing.rotate`: the new key and every change made."""

    kid: str
    changes: list[KeyChange]


@dataclass(frozen=True)
class KeyStatus:
    """One stored key, for operators; ``next_change_at`` is the earliest the schedule acts."""

    kid: str
    algorithm: str
    state: KeyState
    created_at: datetime
    activated_at: datetime | None
    deactivated_at: datetime | None
    retired_at: datetime | None
    next_change: str | None
    next_change_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "kid": self.kid,
            "alg": self.algorithm,
            "state": str(self.state),
            "created_at": iso(self.created_at),
            "activated_at": iso(self.activated_at),
            "deactivated_at": iso(self.deactivated_at),
            "retired_at": iso(self.retired_at),
            "next_change": self.next_change,
            "next_change_at": iso(self.next_change_at),
        }


def _verification_key(jwk: dict[str, Any], private_key: PrivateKeyTypes) -> VerificationKey:
    return VerificationKey(kid=jwk["kid"], alg=jwk["alg"], key=private_key.public_key())


def _times(row: asyncpg.Record) -> KeyTimes:
    def seconds(value: datetime | None) -> float | None:
        return None if value is None else value.timestamp()

    return KeyTimes(
        kid=row["kid"],
        algorithm=row["algorithm"],
        state=KeyState(row["state"]),
        created_at=row["created_at"].timestamp(),
        activated_at=seconds(row["activated_at"]),
        deactivated_at=seconds(row["deactivated_at"]),
    )


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, tz=UTC)


class KeyRing:
    """The keys this service signs with and publishes.

    ``reload()`` picks up other replicas' changes; ``run_schedule()`` moves keys
    along their life cycle (every replica's background loop calls it; the
    advisory lock makes one of them act).
    """

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self._alg = settings.jwt_algorithm
        self._passphrase = settings.key_encryption_key
        self.policy = RotationPolicy.from_settings(settings)
        self.verification_keys = StaticKeySource()
        self._active: SigningKey | None = None
        self._jwks: dict[str, Any] = {"keys": []}
        # Decrypted keys by kid: decrypting (RS256: tens of ms) once, not on every reload.
        self._private_keys: dict[str, PrivateKeyTypes] = {}

    @property
    def algorithm(self) -> str:
        return self._alg

    @property
    def shared_secret(self) -> bool:
        return self._alg == "HS256"

    @property
    def active(self) -> SigningKey:
        if self._active is None:
            raise RuntimeError("the key ring has not been loaded")
        return self._active

    @property
    def ready(self) -> bool:
        return self._active is not None

    def jwks(self) -> dict[str, Any]:
        return self._jwks

    async def load(self, *, now: float) -> None:
        """Load keys, generating the first one for the configured algorithm if none exists."""
        if self.shared_secret:
            self._load_shared_secret()
            return
        active = await self._pool.fetchval(
            "SELECT kid FROM signing_keys WHERE state = 'active' AND algorithm = $1", self._alg
        )
        if active is None:
            # Several replicas may start at once: one generates, the others reuse its key.
            async with self._locked() as connection:
                await self._ensure_active(connection, now)
        await self.reload()

    async def reload(self) -> None:
        """Replace the loaded keys with the stored ones: sign with the active key, publish the rest.

        A key becomes active in the database only after it was published for the
        lead time, so by then this replica has served it in its JWKS too.
        """
        if self.shared_secret:
            return
        rows = await self._pool.fetch(
            "SELECT kid, algorithm, private_key, public_jwk, state FROM signing_keys "
            "WHERE state <> 'retired' ORDER BY created_at"
        )
        verification: list[VerificationKey] = []
        published: list[dict[str, Any]] = []
        active: SigningKey | None = None
        private_keys: dict[str, PrivateKeyTypes] = {}
        for row in rows:
            jwk = _jwk_from_row(row["public_jwk"])
            private_key = self._private_keys.get(row["kid"])
            if private_key is None:
                private_key = serialization.load_pem_private_key(
                    row["private_key"], self._passphrase
                )
            private_keys[row["kid"]] = private_key
            verification.append(_verification_key(jwk, private_key))
            published.append(jwk)
            if row["state"] == KeyState.ACTIVE and row["algorithm"] == self._alg:
                active = SigningKey(kid=row["kid"], alg=row["algorithm"], private_key=private_key)
        if active is None:
            raise RuntimeError(f"no active {self._alg} signing key")
        self.verification_keys.replace(verification)
        self._jwks = {"keys": published}
        self._active = active
        self._private_keys = private_keys

    async def run_schedule(self, *, now: float) -> list[KeyChange]:
        """One step of the schedule (:func:`tessera_auth.key_schedule.plan`), then reload.

        Activates a key published for at least the lead time (the active key
        becomes inactive), retires inactive keys whose tokens have all expired,
        and publishes a successor once the active key is ``interval`` old.
        """
        if self.shared_secret:
            return []
        async with self._locked() as connection:
            step = await self._plan(
                connection, (KeyState.PUBLISHED, KeyState.ACTIVE, KeyState.INACTIVE), now
            )
            changes: list[KeyChange] = []
            if step.activate is not None:
                changes += await self._activate(connection, step.activate, now)
            changes += await self._retire(connection, step.retire, now)
            if step.create_active:
                changes += await self._ensure_active(connection, now)
            elif step.publish:
                changes += await self._publish(connection, now)
        await self.reload()
        return changes

    async def rotate(self, *, now: float, activate_now: bool = False) -> Rotation:
        """Publish a new key now; it signs after the lead time (the schedule activates it).

        A key already published and waiting is reused rather than joined by
        another, so concurrent or repeated requests make one key.
        ``activate_now`` signs with it at once: for emergencies only, since a
        verifier that fetched the JWKS moments ago refuses the new tokens until
        it may refetch (its minimum refetch interval).
        """
        self._refuse_shared_secret()
        async with self._locked() as connection:
            changes: list[KeyChange] = []
            kid = await connection.fetchval(
                "SELECT kid FROM signing_keys WHERE algorithm = $1 AND state = 'published' "
                "ORDER BY created_at LIMIT 1",
                self._alg,
            )
            if kid is None:
                changes += await self._publish(connection, now)
                kid = changes[-1].kid
            if activate_now:
                changes += await self._activate(connection, kid, now)
        await self.reload()
        return Rotation(kid=str(kid), changes=changes)

    async def retire_expired(self, *, now: float) -> list[KeyChange]:
        """Retire the inactive keys whose tokens have all expired, then reload."""
        self._refuse_shared_secret()
        async with self._locked() as connection:
            step = await self._plan(connection, (KeyState.INACTIVE,), now)
            changes = await self._retire(connection, step.retire, now)
        await self.reload()
        return changes

    async def _plan(self, connection: Connection, states: Sequence[KeyState], now: float) -> Step:
        """The schedule's next step (:func:`tessera_auth.key_schedule.plan`) over the
        stored keys in ``states``."""
        rows = await connection.fetch(
            "SELECT kid, algorithm, state, created_at, activated_at, deactivated_at "
            "FROM signing_keys WHERE state = ANY($1::text[])",
            [str(state) for state in states],
        )
        return plan([_times(row) for row in rows], algorithm=self._alg, policy=self.policy, now=now)

    async def status(self, *, now: float) -> list[KeyStatus]:
        """Every stored key, oldest first, with the schedule's next step for each."""
        rows = await self._pool.fetch(
            "SELECT kid, algorithm, state, created_at, activated_at, deactivated_at, retired_at "
            "FROM signing_keys ORDER BY created_at"
        )
        waiting = any(
            r["state"] == KeyState.PUBLISHED and r["algorithm"] == self._alg for r in rows
        )
        return [self._key_status(row, waiting) for row in rows]

    def _key_status(self, row: asyncpg.Record, successor_waiting: bool) -> KeyStatus:
        change, change_at = next_change(
            _times(row),
            own=row["algorithm"] == self._alg and not self.shared_secret,
            successor_waiting=successor_waiting,
            policy=self.policy,
        )
        return KeyStatus(
            kid=row["kid"],
            algorithm=row["algorithm"],
            state=KeyState(row["state"]),
            created_at=row["created_at"],
            activated_at=row["activated_at"],
            deactivated_at=row["deactivated_at"],
            retired_at=row["retired_at"],
            next_change=change,
            next_change_at=None if change_at is None else _at(change_at),
        )

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[Connection]:
        """A transaction holding the key ring's advisory lock (released at commit)."""
        async with self._pool.acquire() as connection, connection.transaction():
            # Another process may hold it while it makes a key (RSA: seconds).
            await connection.execute(
                "SELECT pg_advisory_xact_lock($1)", _KEY_LOCK_ID, timeout=KEY_LOCK_TIMEOUT
            )
            yield connection

    async def _ensure_active(self, connection: Connection, now: float) -> list[KeyChange]:
        exists = await connection.fetchval(
            "SELECT 1 FROM signing_keys WHERE state = 'active' AND algorithm = $1", self._alg
        )
        if exists:
            return []
        kid = await insert_key(connection, self._alg, self._passphrase, state="active", now=now)
        return [KeyChange(kid, KeyState.ACTIVE)]

    async def _publish(self, connection: Connection, now: float) -> list[KeyChange]:
        kid = await insert_key(connection, self._alg, self._passphrase, state="published", now=now)
        return [KeyChange(kid, KeyState.PUBLISHED)]

    async def _activate(self, connection: Connection, kid: str, now: float) -> list[KeyChange]:
        # Demote first: the unique index allows one active key per algorithm.
        demoted = await connection.fetch(
            "UPDATE signing_keys SET state = 'inactive', deactivated_at = $2 "
            "WHERE algorithm = $1 AND state = 'active' RETURNING kid",
            self._alg,
            _at(now),
        )
        await connection.execute(
            "UPDATE signing_keys SET state = 'active', activated_at = $2 WHERE kid = $1",
            kid,
            _at(now),
        )
        changes = [KeyChange(row["kid"], KeyState.INACTIVE) for row in demoted]
        changes.append(KeyChange(kid, KeyState.ACTIVE))
        for change in changes:
            log.info("signing key %s is now %s", change.kid, change.state)
        return changes

    async def _retire(
        self, connection: Connection, kids: Sequence[str], now: float
    ) -> list[KeyChange]:
        if not kids:
            return []
        rows = await connection.fetch(
            "UPDATE signing_keys SET state = 'retired', retired_at = $2 "
            "WHERE state = 'inactive' AND kid = ANY($1::text[]) RETURNING kid",
            list(kids),
            _at(now),
        )
        for row in rows:
            log.info("signing key %s is now retired", row["kid"])
        return [KeyChange(row["kid"], KeyState.RETIRED) for row in rows]

    def _refuse_shared_secret(self) -> None:
        if self.shared_secret:
            raise KeyRotationUnsupported()

    def _load_shared_secret(self) -> None:
        secret = self._settings.hs256_secret
        assert secret is not None
        kid = shared_secret_kid(secret)
        self._active = SigningKey(kid=kid, alg="HS256", private_key=secret)
        self.verification_keys.replace([VerificationKey(kid=kid, alg="HS256", key=secret)])
        self._jwks = {"keys": []}  # a shared secret is never published


async def insert_key(
    connection: Connection,
    alg: str,
    passphrase: bytes,
    *,
    state: str,
    now: float,
) -> str:
    """Generate and store a new key in ``state``; returns its kid."""
    # RSA generation takes tens of milliseconds: not on the event loop.
    jwk, pem = await asyncio.get_running_loop().run_in_executor(
        None, new_encrypted_key, alg, passphrase
    )
    when = _at(now)
    await connection.execute(
        """INSERT INTO signing_keys (kid, algorithm, private_key, public_jwk, state,
                                     created_at, activated_at)
           VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)""",
        jwk["kid"],
        alg,
        pem,
        json.dumps(jwk),
        state,
        when,
        when if state == "active" else None,
    )
    log.info("generated %s signing key %s (%s)", alg, jwk["kid"], state)
    return str(jwk["kid"])


def _jwk_from_row(value: Any) -> dict[str, Any]:
    data = json.loads(value) if isinstance(value, str) else value
    assert isinstance(data, dict)
    return data
