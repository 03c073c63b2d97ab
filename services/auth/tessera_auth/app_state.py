"""Typed application keys: every shared resource of the auth app, in one place."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from tessera_verify.access_tokens import AccessTokenVerifier
from tessera_verify.authenticators import Authentication
from tessera_verify.clock import Clock
from tessera_verify.revocation_cache import RevocationCache
from tessera_verify.sessions import SessionManager

from .access_tokens import AccessTokenIssuer
from .accounts import Accounts
from .audit import AuditLog
from .keyring import KeyRing
from .metrics import AuthMetrics
from .password_check import PasswordCheck
from .portal.csrf import FormTokens
from .portal.return_url import ReturnUrlPolicy
from .refresh_tokens import RefreshTokenStore
from .regulation import Regulator
from .revocation_store import RevocationStore
from .revoker import Revoker
from .settings import Settings
from .token_pairs import TokenPairs

SETTINGS = web.AppKey("settings", Settings)
CLOCK = web.AppKey("clock", Clock)
#: The portal's CSRF form tokens and return-URL allow-list, made once from the settings.
FORM_TOKENS = web.AppKey("form_tokens", FormTokens)
RETURN_URLS = web.AppKey("return_urls", ReturnUrlPolicy)
METRICS = web.AppKey("metrics", AuthMetrics)
REDIS = web.AppKey("redis", Redis)
DB = web.AppKey("db", asyncpg.Pool)
KEYRING = web.AppKey("keyring", KeyRing)
SESSIONS = web.AppKey("sessions", SessionManager)
ACCOUNTS = web.AppKey("accounts", Accounts)
ISSUER = web.AppKey("issuer", AccessTokenIssuer)
VERIFIER = web.AppKey("verifier", AccessTokenVerifier)
AUTHENTICATION = web.AppKey("authentication", Authentication)
REFRESH_TOKENS = web.AppKey("refresh_tokens", RefreshTokenStore)
TOKEN_PAIRS = web.AppKey("token_pairs", TokenPairs)
REVOCATION_STORE = web.AppKey("revocation_store", RevocationStore)
REVOCATIONS = web.AppKey("revocations", RevocationCache)
REVOKER = web.AppKey("revoker", Revoker)
AUDIT = web.AppKey("audit", AuditLog)
REGULATOR = web.AppKey("regulator", Regulator)
PASSWORD_CHECK = web.AppKey("password_check", PasswordCheck)
