"""Where the local stack keeps its files, and what it remembers between commands.

Everything lives under one run directory (``.run/`` by default)::

    data/        PostgreSQL cluster, Redis working directory (its AOF) or a Redis
                 group (redis-sentinel/, redis-cluster/: nodes and their ports), kept by ``down``
    logs/        NAME.log: stdout and stderr of each process; nginx-access.log
    pids/        NAME.pid
    secrets/     session_hash_key, key_encryption_key, forward_auth_secret, the
                 Redis users' passwords and ACL file (0600; see redis_acl), own_urls
                 (every URL of the stack's own servers stack.env has carried)
    tls/         ca.pem (trust this), server.pem, server.key
    nginx/       nginx's prefix: conf/ (rendered, 0700), tmp/, pid and lock files
    prometheus/  with --monitoring: prometheus.yml and targets/ (its data in data/prometheus/)
    state.json   what runs and where, for every later command
    stack.env    URLs for scripts: BASE_URL, AUTH_URL, JWKS_URL, REPLICA_URLS, ...
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tessera_stack import redis_acl
from tessera_stack.servers import NginxServer, PostgresServer, PrometheusServer, RedisServer
from tessera_stack.tls import TlsFiles

__all__ = [
    "AUTH",
    "NGINX",
    "OPERATOR_SECRET",
    "PROMETHEUS",
    "REPLICA_PREFIX",
    "Layout",
    "ReplicaEntry",
    "StackState",
]

AUTH = "auth"
NGINX = "nginx"
PROMETHEUS = "prometheus"
#: The live page's operator secret, in ``secrets/`` (tessera_stack.live_page).
OPERATOR_SECRET = "operator_secret"  # noqa: S105 - a file name
#: The stack PostgreSQL's superuser (the auth service, migrations, the admin CLI).
POSTGRES_SUPERUSER = "tessera"
#: The replicas' PostgreSQL role: their own schema (the forum), none of auth's tables.
REPLICA_DB_ROLE = "tessera_replica"
#: Process (pid and log file) name of replica ``r1``: ``resource-r1``.
REPLICA_PREFIX = "resource-"


@dataclass(frozen=True)
class Layout:
    """Where the launcher keeps everything, under ``root`` (``.run/``)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(self.root / "tls")

    @property
    def nginx(self) -> Path:
        return self.root / "nginx"

    @property
    def nginx_conf(self) -> Path:
        return self.nginx / "conf"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def stack_env(self) -> Path:
        return self.root / "stack.env"

    @property
    def own_urls(self) -> Path:
        """The URLs of the stack's own PostgreSQL and Redis that ``stack.env`` has carried,
        one per line (they hold passwords: under secrets/). Kept by ``down``: a shell that
        sourced an old stack.env still exports them."""
        return self.secret("own_urls")

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pid(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def secret(self, name: str) -> Path:
        return self.secrets / name

    def create(self) -> None:
        for directory in (self.root, self.data, self.logs, self.pids, self.nginx):
            directory.mkdir(parents=True, exist_ok=True)
        self.secrets.mkdir(mode=0o700, exist_ok=True)
        self.secrets.chmod(0o700)

    def postgres(self, port: int | None = None) -> PostgresServer:
        """The stack's PostgreSQL, durable, with passwords and the replicas' own role
        (once ``up`` made their secrets); on ``port`` when given, else a free one."""
        password = self.postgres_password(POSTGRES_SUPERUSER)
        replica_password = self.postgres_password(REPLICA_DB_ROLE)
        return PostgresServer(
            self.data,
            port=port,
            persistent=True,
            log_path=self.log("postgres"),
            pid_path=self.pid("postgres"),
            detached=True,
            password=password,
            roles={REPLICA_DB_ROLE: replica_password} if password and replica_password else None,
        )

    def postgres_password(self, role: str) -> str | None:
        """The stack PostgreSQL role ``role``'s password; None until ``up`` made it."""
        try:
            return self.secret(f"postgres_{role}_password").read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None

    def redis(self, port: int | None = None) -> RedisServer:
        """The stack's Redis, durable (AOF), with its users (:mod:`tessera_stack.redis_acl`);
        on ``port`` when given, else a free one."""
        return RedisServer(
            self.data,
            port=port,
            persistent=True,
            log_path=self.log("redis"),
            pid_path=self.pid("redis"),
            detached=True,
            acl_file=self.redis_acl,
            admin_password=self.redis_password(redis_acl.ADMIN),
        )

    @property
    def redis_acl(self) -> Path:
        """The stack Redis's ACL file, rendered by ``up`` from the passwords."""
        return self.secret("redis_users.acl")

    def redis_password(self, user: str) -> str | None:
        """The stack Redis user ``user``'s password; None until ``up`` made it."""
        try:
            return self.secret(f"redis_{user}_password").read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None

    @property
    def prometheus(self) -> Path:
        """The optional Prometheus's configuration: prometheus.yml, targets/*.json."""
        return self.root / "prometheus"

    def prometheus_server(self, port: int) -> PrometheusServer:
        """The optional Prometheus (``up --monitoring``), its time series in data/."""
        return PrometheusServer(
            self.data / "prometheus",
            self.prometheus / "prometheus.yml",
            port=port,
            log_path=self.log(PROMETHEUS),
            pid_path=self.pid(PROMETHEUS),
            detached=True,
        )

    def nginx_server(self, https_port: int) -> NginxServer:
        return NginxServer(
            self.nginx,
            self.nginx_conf / "nginx.conf",
            port=https_port,
            log_path=self.log(NGINX),
            pid_path=self.pid(NGINX),
            detached=True,
        )


@dataclass(frozen=True)
class ReplicaEntry:
    """A resource replica the stack runs: ``r1`` on a loopback port."""

    id: str
    port: int

    @property
    def process(self) -> str:
        """Its pid and log file name."""
        return f"{REPLICA_PREFIX}{self.id}"

    @property
    def number(self) -> int:
        return int(self.id[1:])


@dataclass
class StackState:
    """What ``state.json`` records; every field is empty until known."""

    postgres: str = ""  # "managed" or "external"
    redis: str = ""
    database_url: str = ""
    redis_url: str = ""
    # The ports of the managed PostgreSQL and Redis: a server that dies comes
    # back on the same one, where the running services look for it.
    postgres_port: int | None = None
    redis_port: int | None = None
    # What the managed Redis is: "single" (one server, ``redis_port``), or a
    # "sentinel" / "cluster" group (see tessera_stack.stack_redis).
    redis_topology: str = ""
    port: int | None = None  # the auth service's port, set once it is up
    https_port: int | None = None
    alg: str = ""
    row: int | None = None
    policy: str = ""
    # The TESSERA_AUTH_METHODS the running replicas were started with.
    methods: str = ""
    replicas: list[ReplicaEntry] = field(default_factory=list)
    # Per running service (``auth``, ``resource-r1``, ...): the addresses it was
    # started with (see tessera_stack.services.addresses). A service whose
    # record differs from what it would be given now holds a stale address.
    addresses: dict[str, dict[str, str]] = field(default_factory=dict)
    # ``up --monitoring``: Prometheus runs (see tessera_stack.monitoring), on this port.
    monitoring: bool = False
    prometheus_port: int | None = None
    # The live load-balancer page's port (tessera_stack.live_page).
    live_port: int | None = None

    @classmethod
    def load(cls, layout: Layout) -> StackState:
        """The saved state, or an empty one when there is none (or it is garbled)."""
        try:
            raw = json.loads(layout.state.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return cls()
        return cls.from_json(raw) if isinstance(raw, dict) else cls()

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> StackState:
        def text(key: str) -> str:
            value = raw.get(key)
            return str(value) if value is not None else ""

        def number(key: str) -> int | None:
            value = raw.get(key)
            try:
                return int(value) if value is not None and value != "" else None
            except (TypeError, ValueError):
                return None

        replicas: list[ReplicaEntry] = []
        for item in raw.get("replicas") or []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                try:
                    replicas.append(ReplicaEntry(item["id"], int(item["port"])))
                except (KeyError, TypeError, ValueError):
                    continue
        addresses: dict[str, dict[str, str]] = {}
        raw_addresses = raw.get("addresses")
        if isinstance(raw_addresses, dict):
            for name, values in raw_addresses.items():
                if isinstance(values, dict):
                    addresses[str(name)] = {str(k): str(v) for k, v in values.items()}
        return cls(
            postgres=text("postgres"),
            redis=text("redis"),
            database_url=text("database_url"),
            redis_url=text("redis_url"),
            postgres_port=number("postgres_port"),
            redis_port=number("redis_port"),
            redis_topology=text("redis_topology"),
            port=number("port"),
            https_port=number("https_port"),
            alg=text("alg"),
            row=number("row"),
            policy=text("policy"),
            methods=text("methods"),
            replicas=replicas,
            addresses=addresses,
            monitoring=raw.get("monitoring") is True,
            prometheus_port=number("prometheus_port"),
            live_port=number("live_port"),
        )

    def save(self, layout: Layout) -> None:
        """Write ``state.json`` atomically."""
        tmp = layout.state.with_name(".state.json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n", "utf-8")
        tmp.replace(layout.state)

    def replica(self, replica_id: str) -> ReplicaEntry | None:
        return next((entry for entry in self.replicas if entry.id == replica_id), None)
