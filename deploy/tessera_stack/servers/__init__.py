"""Real, throwaway PostgreSQL and Redis servers run as local processes.

Each server binds a free port on 127.0.0.1, keeps its data and log under a
base directory, and is started and stopped synchronously, so the same class
serves a pytest session fixture and the local stack launcher::

    with PostgresServer(tmp_path) as pg, RedisServer(tmp_path) as redis:
        run_tests(pg.url, redis.url)

With ``detached=True`` and a ``pid_path`` the server runs in its own session
and outlives the Python process that started it; a later process stops it
with a new object built on the same paths (``stop()`` falls back to the pid
file).

They listen on loopback only and exist for tests and local development, never
for production data; PostgreSQL and Redis trust every connection unless given
passwords (the local stack's, with its roles). One module per server
(``postgres_server``, ``redis_server``, ``nginx_server``, ``prometheus_server``)
on a shared ``base``.
"""

from tessera_stack.processes import StackError, free_port
from tessera_stack.servers.base import LOOPBACK, ProcessOptions, ServerOptions
from tessera_stack.servers.nginx_server import NginxServer, find_nginx, nginx_check
from tessera_stack.servers.postgres_server import (
    ROLE_SCRIPT,
    PostgresServer,
    find_postgres_bindir,
    sweep_orphaned_scratch,
)
from tessera_stack.servers.prometheus_server import PrometheusServer, find_prometheus
from tessera_stack.servers.redis_server import RedisServer

__all__ = [
    "LOOPBACK",
    "ROLE_SCRIPT",
    "NginxServer",
    "PostgresServer",
    "ProcessOptions",
    "PrometheusServer",
    "RedisServer",
    "ServerOptions",
    "StackError",
    "find_nginx",
    "find_postgres_bindir",
    "find_prometheus",
    "free_port",
    "nginx_check",
    "sweep_orphaned_scratch",
]
