"""Render the checked-in nginx templates (``nginx/``) for one load-balancing policy.

The templates are real nginx configuration with ``{{ name }}`` placeholders
for what only the running stack knows: ports, paths, the replicas and, for
forward auth, the shared secret. ``policies/<policy>.conf`` is the entry
file; it includes the shared files (``main.conf``, ``http.conf``,
``server.conf``, ...), which are rendered next to it so that nginx resolves
the relative includes against the rendered directory::

    render_to(config, Path(".run/nginx/conf"))  # writes nginx.conf and friends
    nginx -p .run/nginx/ -e stderr -c .run/nginx/conf/nginx.conf

Lists (the replicas' ``server`` lines, the route-cookie map) are produced
here and indented to the placeholder's column.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tessera_stack.processes import StackError

__all__ = [
    "CACHE_VARIABLE",
    "FORWARD_AUTH_CACHE_SECONDS",
    "POLICIES",
    "REVOCATION_PROPAGATION_SECONDS",
    "SERVICES_DEFAULT_STALENESS",
    "STALENESS_VARIABLE",
    "ConfigTarget",
    "NginxConfig",
    "Replica",
    "default_demo_site",
    "default_template_dir",
    "forward_auth_cache_seconds",
    "render",
    "render_to",
    "revocation_max_staleness",
]

POLICIES = ("round_robin", "ip_hash", "route_cookie", "least_conn", "forward_auth")
ENTRY_FILE = "nginx.conf"
# Rendered for every policy; identity_forward.conf only for forward_auth.
SHARED_FILES = (
    "main.conf",
    "http.conf",
    "server.conf",
    "proxy.conf",
    "response_headers.conf",
    "error_pages.conf",
    "identity_cleared.conf",
    "replica_retry.conf",
    "protected_app.conf",
    "protected_app_maps.conf",
    "portal_guard.conf",
)
FORWARD_FILE = "identity_forward.conf"
# Only where the live page runs (the local stack's ``live`` process, ``live_port``).
LIVE_FILE = "live_page.conf"
# A replica that failed once is left alone this long before nginx tries it again.
FAIL_TIMEOUT_SECONDS = 5

#: DESIGN.md, "Reliability": a revocation reaches every verifier within this when healthy.
REVOCATION_PROPAGATION_SECONDS = 1
#: forward_auth: how long nginx may reuse one ``auth_request`` answer. nginx keys each
#: answer by the clock second its request started in, so it is never reused past that
#: second; the propagation bound is the most it may be (0: never reused).
FORWARD_AUTH_CACHE_SECONDS = REVOCATION_PROPAGATION_SECONDS
#: The launcher's opt-in (0, the default, or 1). Off by default: with it a logout is in
#: force at nginx within that second, not at once (nginx cannot be told of a logout),
#: and the demo's promise that no credential is accepted once its logout answered
#: (``demo --faults``) no longer holds for row 6.
CACHE_VARIABLE = "TESSERA_FORWARD_AUTH_CACHE_SECONDS"
# Its storage, declared only when it is on (nginx would run a cache loader and manager
# for it otherwise): 4 MiB of keys (about 32,000), each entry deleted 2 s after its
# last use, written in place.
_CACHE_PARAMETERS = (
    "levels=1:2 keys_zone=tessera_forward_auth:4m max_size=64m inactive=2s use_temp_path=off"
)
#: Where the services read S, the staleness bound, and its value when unset
#: (tessera_verify's DEFAULT_MAX_STALENESS: a test checks that they agree).
STALENESS_VARIABLE = "TESSERA_REVOCATION_MAX_STALENESS"
SERVICES_DEFAULT_STALENESS = 5.0

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
_REPLICA_ID = re.compile(r"^r[0-9]{1,4}$")
# Characters that never need quoting in an nginx argument.
_BARE = re.compile(r"^[A-Za-z0-9_./:@%+=,-]+$")


@dataclass(frozen=True)
class Replica:
    """One resource replica as nginx sees it: an ID and a loopback port."""

    id: str
    port: int
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if not _REPLICA_ID.fullmatch(self.id):
            raise ValueError(f"replica id must look like r1, r2, ... (got {self.id!r})")
        if not 0 < self.port < 65536:
            raise ValueError(f"invalid port {self.port} for replica {self.id}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class NginxConfig:
    """Everything a policy's configuration depends on."""

    policy: str
    nginx_dir: Path
    log_dir: Path
    https_port: int
    auth_port: int
    replicas: tuple[Replica, ...]
    tls_cert: Path
    tls_key: Path
    forward_secret: str | None = None
    host: str = "127.0.0.1"
    # Where nginx listens, when not on ``host`` (in a container: 0.0.0.0 while
    # ``host`` names the auth service).
    listen_host: str | None = None
    server_names: tuple[str, ...] = ("127.0.0.1", "localhost")
    worker_processes: str = "auto"
    error_log_level: str = "notice"
    # The static site nginx serves at /app/ behind forward auth (None: the
    # repository's deploy/demo-site, next to the templates).
    demo_site: Path | None = None
    # The local stack's live load-balancer page (tessera_stack.live_page) on this
    # port of ``host``; None: no /live/ (compose, Kubernetes).
    live_port: int | None = None
    # forward_auth: seconds nginx reuses the auth service's 200 for the same credential
    # (0 or FORWARD_AUTH_CACHE_SECONDS), never more than the services' staleness bound S,
    # which must then be given (:func:`forward_auth_cache_seconds` derives both).
    forward_auth_cache_seconds: int = 0
    revocation_max_staleness: float | None = None

    def problems(self) -> list[str]:
        """Every reason this configuration cannot be rendered (empty when fine)."""
        found: list[str] = []
        if self.policy not in POLICIES:
            found.append(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if not self.replicas:
            found.append("at least one replica is needed")
        ids = [replica.id for replica in self.replicas]
        if len(set(ids)) != len(ids):
            found.append(f"replica ids repeat: {', '.join(ids)}")
        if self.live_port is not None and not 0 < self.live_port < 65536:
            found.append(f"invalid port {self.live_port} for the live page")
        if self.policy == "forward_auth":
            if not self.forward_secret:
                found.append("forward_auth needs the forward-auth secret")
            elif not re.fullmatch(r"[A-Za-z0-9_-]{32,}", self.forward_secret):
                # It is written inside a quoted nginx string.
                found.append("the forward-auth secret must be 32+ URL-safe characters")
        if self.forward_auth_cache_seconds:
            found += self._cache_problems()
        return found

    def _cache_problems(self) -> list[str]:
        seconds, staleness = self.forward_auth_cache_seconds, self.revocation_max_staleness
        if seconds != FORWARD_AUTH_CACHE_SECONDS:
            return [
                f"the forward-auth cache lasts 0 or {FORWARD_AUTH_CACHE_SECONDS} s (the "
                f"revocation propagation bound), not {seconds}"
            ]
        if staleness is None:
            return ["the forward-auth cache needs the services' staleness bound S"]
        if seconds > staleness:
            return [
                f"the forward-auth cache ({seconds} s) would outlive the services' "
                f"staleness bound S ({staleness:g} s)"
            ]
        return []


@dataclass(frozen=True)
class ConfigTarget:
    """Where a rendered configuration lives on disk."""

    directory: Path
    #: Whether rendering changed any file there (a running nginx needs a reload).
    changed: bool = True

    @property
    def entry(self) -> Path:
        """The file to pass to ``nginx -c``."""
        return self.directory / ENTRY_FILE


def default_template_dir() -> Path:
    """``nginx/`` at the repository root (the package lives in ``deploy/``)."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "nginx", Path.cwd() / "nginx"):
        if (candidate / "policies").is_dir():
            return candidate
    raise StackError(
        f"nginx templates not found (looked in {here.parents[2] / 'nginx'} and ./nginx)"
    )


def default_demo_site(template_dir: Path) -> Path:
    """``deploy/demo-site`` beside the templates (``nginx/``) in the repository."""
    return template_dir.resolve().parent / "deploy" / "demo-site"


def revocation_max_staleness(environ: Mapping[str, str]) -> float | None:
    """S as services started with ``environ`` read it; None where they would refuse it."""
    raw = environ.get(STALENESS_VARIABLE, "").strip()
    if not raw:
        return SERVICES_DEFAULT_STALENESS
    try:
        staleness = float(raw)
    except ValueError:
        return None
    return staleness if staleness >= 0 else None


def forward_auth_cache_seconds(environ: Mapping[str, str]) -> int:
    """How long nginx may reuse an ``auth_request`` answer for a launcher run in
    ``environ``: what :data:`CACHE_VARIABLE` asks for (0 unless set), and 0 (never)
    when the services' staleness bound S is shorter or unreadable."""
    requested = environ.get(CACHE_VARIABLE, "").strip() or "0"
    if requested not in ("0", str(FORWARD_AUTH_CACHE_SECONDS)):
        raise StackError(f"{CACHE_VARIABLE} must be 0 or {FORWARD_AUTH_CACHE_SECONDS}")
    staleness = revocation_max_staleness(environ)
    if requested == "0" or staleness is None or staleness < FORWARD_AUTH_CACHE_SECONDS:
        return 0
    return FORWARD_AUTH_CACHE_SECONDS


def _others_may_enter(path: Path) -> bool:
    """Whether every existing directory on the way to ``path`` lets any user through."""
    return all(
        parent.stat().st_mode & stat.S_IXOTH
        for parent in (path.absolute(), *path.absolute().parents)
        if parent.is_dir()
    )


def _worker_user(config: NginxConfig) -> str:
    """nginx's ``user`` line. Started by root, nginx runs its workers as nobody, and
    they open the forward-auth cache under ``nginx_dir`` themselves: where a directory
    on the way shuts others out (a temporary directory of mode 0700, as the bench and
    the tests make), the workers run as the stack's own user instead."""
    if (
        config.forward_auth_cache_seconds
        and os.geteuid() == 0
        and not _others_may_enter(config.nginx_dir)
    ):
        return "user root;  # the forward-auth cache's directory is root's alone"
    return "# user: nginx's default (nobody when started by root)"


def _quote(value: str | Path) -> str:
    text = str(value)
    if _BARE.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _server_lines(replicas: Sequence[Replica], *, backup_except: str | None = None) -> list[str]:
    lines = []
    for replica in replicas:
        backup = backup_except is not None and replica.id != backup_except
        params = f"max_fails=1 fail_timeout={FAIL_TIMEOUT_SECONDS}s"
        lines.append(
            f"server {replica.address} {params}{' backup' if backup else ''};  # {replica.id}"
        )
    return lines


def _route_upstreams(replicas: Sequence[Replica]) -> list[str]:
    lines: list[str] = []
    for replica in replicas:
        # The primary first: nginx lists backups after it whatever the order.
        ordered = [replica, *(other for other in replicas if other.id != replica.id)]
        lines.append(f"upstream tessera_route_{replica.id} {{")
        lines.append("    zone tessera_routes 256k;")
        lines += [f"    {line}" for line in _server_lines(ordered, backup_except=replica.id)]
        lines.append("    keepalive 8;")
        lines.append("}")
    return lines


def _values(config: NginxConfig, template_dir: Path) -> dict[str, str | list[str]]:
    temp = config.nginx_dir / "tmp"
    demo_site = config.demo_site or default_demo_site(template_dir)
    cache_zone, cache_path = "off", "# (no forward-auth cache: proxy_cache is off)"
    if config.forward_auth_cache_seconds:
        cache_dir = _quote(config.nginx_dir / "cache" / "forward_auth")
        cache_zone, cache_path = (
            "tessera_forward_auth",
            f"proxy_cache_path {cache_dir} {_CACHE_PARAMETERS};",
        )
    return {
        "pid_file": _quote(config.nginx_dir / "nginx.pid"),
        "lock_file": _quote(config.nginx_dir / "nginx.lock"),
        "temp_client_body": _quote(temp / "client_body"),
        "temp_proxy": _quote(temp / "proxy"),
        "temp_fastcgi": _quote(temp / "fastcgi"),
        "temp_uwsgi": _quote(temp / "uwsgi"),
        "temp_scgi": _quote(temp / "scgi"),
        "access_log": _quote(config.log_dir / "nginx-access.log"),
        "worker_processes": config.worker_processes,
        "worker_user": _worker_user(config),
        "error_log_level": config.error_log_level,
        "auth_address": f"{config.host}:{config.auth_port}",
        "listen_address": f"{config.listen_host or config.host}:{config.https_port}",
        "server_names": " ".join(config.server_names),
        "tls_cert": _quote(config.tls_cert),
        "tls_key": _quote(config.tls_key),
        "replica_servers": _server_lines(config.replicas),
        "route_map": [f"{replica.id} tessera_route_{replica.id};" for replica in config.replicas],
        "route_upstreams": _route_upstreams(config.replicas),
        "forward_secret": config.forward_secret or "",
        # An alias for a location ending in "/" ends in "/" too.
        "demo_site": _quote(f"{demo_site}/"),
        "live_page": f"include {LIVE_FILE};"
        if config.live_port is not None
        else "# (no live page here: it runs in the local stack only)",
        "live_address": f"{config.host}:{config.live_port}",
        "forward_auth_cache_path": cache_path,
        "forward_auth_cache": cache_zone,
    }


def _substitute(name: str, text: str, values: Mapping[str, str | list[str]]) -> str:
    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise StackError(f"nginx template {name}: unknown placeholder {{{{ {key} }}}}")
        value = values[key]
        if isinstance(value, str):
            return value
        # Continuation lines take the placeholder's indentation.
        line_start = text.rfind("\n", 0, match.start()) + 1
        indent = " " * (match.start() - line_start)
        return f"\n{indent}".join(value)

    return _PLACEHOLDER.sub(replace, text)


def render(config: NginxConfig, template_dir: Path | None = None) -> dict[str, str]:
    """The rendered files of ``config``'s policy, by file name (``nginx.conf`` first)."""
    if problems := config.problems():
        raise StackError("cannot render the nginx configuration: " + "; ".join(problems))
    templates = template_dir or default_template_dir()
    values = _values(config, templates)
    sources = {ENTRY_FILE: templates / "policies" / f"{config.policy}.conf"}
    names = [*SHARED_FILES]
    if config.policy == "forward_auth":
        names.append(FORWARD_FILE)
    if config.live_port is not None:
        names.append(LIVE_FILE)
    sources.update({name: templates / name for name in names})
    rendered: dict[str, str] = {}
    for name, source in sources.items():
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise StackError(f"cannot read nginx template {source}: {exc.strerror}") from None
        rendered[name] = _substitute(name, text, values)
    return rendered


def render_to(
    config: NginxConfig, directory: Path, template_dir: Path | None = None
) -> ConfigTarget:
    """Render ``config`` into ``directory`` (mode 0700: it may hold the secret).

    Files whose text is already what they would be are left alone, and the
    result says whether anything changed.
    """
    files = render(config, template_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    changed = False
    for stale in directory.glob("*.conf"):
        if stale.name not in files:
            stale.unlink()
            changed = True
    for name, text in files.items():
        path = directory / name
        try:
            if path.read_text(encoding="utf-8") == text:
                continue
        except (OSError, UnicodeDecodeError):
            pass
        changed = True
        tmp = path.with_name(f".{name}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        tmp.replace(path)
    (config.nginx_dir / "tmp").mkdir(parents=True, exist_ok=True)
    # nginx makes the cache's own directory (mode 0700, for its workers' user: the
    # keys in it are credentials), not its parents.
    (config.nginx_dir / "cache").mkdir(parents=True, exist_ok=True)
    return ConfigTarget(directory, changed)
