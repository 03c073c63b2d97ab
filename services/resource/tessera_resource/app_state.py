"""Typed application keys of the resource service."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from tessera_verify.clock import Clock
from tessera_verify.http_metrics import ServiceMetrics

from .comments import CommentRepository
from .password_check import PasswordChecker
from .settings import ResourceSettings

SETTINGS = web.AppKey("settings", ResourceSettings)
CLOCK = web.AppKey("clock", Clock)
METRICS = web.AppKey("metrics", ServiceMetrics)
DB = web.AppKey("db", asyncpg.Pool)
COMMENTS = web.AppKey("comments", CommentRepository)
PASSWORDS = web.AppKey("passwords", PasswordChecker)
