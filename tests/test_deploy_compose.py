"""docker-compose.yml, checked without a Docker engine: against the Compose
Specification's schema, for the topology and start-up order it promises, for
secrets that fail fast, and for environments the services' own settings loaders
accept. The nginx image renders its configuration from nginx/ with the
standard library only (the test runs the image's own command), and nginx
accepts the result.

Helpers named without ``test_`` are shared with tests/test_deploy_kubernetes.py.
"""

from __future__ import annotations

import ast
import re
import shlex
import stat
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tessera_auth.settings import Settings
from tessera_auth.settings import load_settings as load_auth_settings
from tessera_resource.settings import ResourceSettings
from tessera_resource.settings import load_settings as load_resource_settings
from tessera_stack import redis_acl
from tessera_stack.compose_nginx import DEMO_SITE, HTTPS_PORT, compose_config, render_compose
from tessera_stack.servers import nginx_check
from tessera_stack.services import INTROSPECTION_CLIENT_ID
from tessera_stack.tls import TlsFiles, ensure_certificate

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
NGINX_DOCKERFILE = ROOT / "deploy" / "docker" / "nginx.Dockerfile"
# The nginx image's render stage: the repository's nginx/ and deploy/tessera_stack/
# under /src, this command run in /src/deploy.
RENDER_SOURCES = ("nginx/", "deploy/tessera_stack/")
RENDER_WORKDIR = "deploy"
RENDER_COMMAND = "python -B -E -S -m tessera_stack.compose_nginx --out /out"
# Debian's interpreter: with -S it sees the standard library only, as in the image.
SYSTEM_PYTHON = "/usr/bin/python3"
MAKE_SECRETS = ROOT / "deploy" / "compose" / "make-secrets.sh"
SECRETS_IN_CONTAINER = "/run/secrets/"
TESSERA_SERVICES = ("migrate", "auth", "resource")
# Variables the services read, as they appear in their source (plus *_FILE forms).
_SETTING_NAME = re.compile(r"^(?:TESSERA_[A-Z0-9_]+|DATABASE_URL|REDIS_URL)$")
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


# -- shared helpers -------------------------------------------------------------


class MissingVariableError(Exception):
    """A ``${NAME:?message}`` variable is unset: compose refuses to start."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``value`` with compose's variable interpolation applied to every string in it."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if unset else str(current)
        if op in (":?", "?") and unset:
            raise MissingVariableError(f"{name}: {arg}")
        return current or ""

    return _INTERPOLATION.sub(replace, value)


def required_variables(value: Any) -> set[str]:
    """The ``${NAME:?...}`` / ``${NAME?...}`` variables anywhere in ``value``."""
    if isinstance(value, dict):
        return set().union(*(required_variables(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(required_variables(item) for item in value))
    if not isinstance(value, str):
        return set()
    return {
        match.group("name")
        for match in _INTERPOLATION.finditer(value)
        if match.group("op") in (":?", "?")
    }


def compose_raw() -> dict[str, Any]:
    """docker-compose.yml as written (YAML merge keys resolved, no interpolation)."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return data


def settings_names() -> set[str]:
    """Every TESSERA_*, DATABASE_URL and REDIS_URL name in the services' source."""
    names: set[str] = set()
    for path in (ROOT / "services").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and _SETTING_NAME.match(node.value)
            ):
                names.add(node.value)
    return names


def unknown_settings(names: set[str]) -> set[str]:
    """The service variables in ``names`` (with or without ``_FILE``) no service reads."""
    known = settings_names()
    candidates = {name for name in names if _SETTING_NAME.match(name.removesuffix("_FILE"))}
    return {name for name in candidates if name.removesuffix("_FILE") not in known}


def load_service_settings(program: str, environ: Mapping[str, str]) -> Settings | ResourceSettings:
    """Run ``program``'s own settings loader on ``environ`` (ConfigError when invalid)."""
    if program == "tessera_auth":
        return load_auth_settings(dict(environ))
    assert program == "tessera_resource", program
    return load_resource_settings(dict(environ))


def with_secret_files(
    environ: Mapping[str, str], prefix: str, files: Mapping[str, Path]
) -> dict[str, str]:
    """``environ`` with every ``prefix + name`` value pointed at ``files[name]``."""
    result = dict(environ)
    for key, value in environ.items():
        if value.startswith(prefix):
            name = value.removeprefix(prefix)
            assert name in files, f"{key}={value}: no such secret"
            result[key] = str(files[name])
    return result


# -- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What deploy/compose/make-secrets.sh creates."""
    directory = tmp_path_factory.mktemp("compose") / "secrets"
    subprocess.run([str(MAKE_SECRETS), str(directory)], check=True, capture_output=True)
    return directory


@pytest.fixture(scope="module")
def compose(secrets_dir: Path) -> dict[str, Any]:
    """docker-compose.yml as compose sees it with SECRETS_DIR set and nothing else."""
    interpolated: dict[str, Any] = interpolate(compose_raw(), {"SECRETS_DIR": str(secrets_dir)})
    return interpolated


def _service_secret_files(compose: dict[str, Any], service: str) -> dict[str, Path]:
    declared = compose["secrets"]
    return {name: Path(declared[name]["file"]) for name in compose["services"][service]["secrets"]}


def _programs(service: dict[str, Any]) -> list[str]:
    words = " ".join([*service.get("entrypoint", []), *service.get("command", [])])
    return [program for program in ("tessera_auth", "tessera_resource") if program in words]


# -- schema ---------------------------------------------------------------------------


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).with_name("check-jsonschema")
    return subprocess.run(
        [str(executable), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    result = _check_jsonschema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_misspelt_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE_FILE.read_text(encoding="utf-8").replace("healthcheck:", "healthchek:", 1)
    )
    assert _check_jsonschema(broken).returncode != 0


# -- topology and start-up order ---------------------------------------------------------


def test_compose_runs_postgres_redis_auth_scalable_replicas_nginx_prometheus_grafana() -> None:
    services = compose_raw()["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "db-roles",
        "migrate",
        "auth",
        "resource",
        "nginx",
        "prometheus",
        "grafana",
    }
    resource = services["resource"]
    assert resource["deploy"]["replicas"] == 3
    # `--scale resource=N` needs neither a fixed name nor a host port.
    assert "container_name" not in resource
    assert "ports" not in resource
    assert not any("container_name" in service for service in services.values())
    # One image, two programs.
    assert (
        services["auth"]["image"] == services["resource"]["image"] == services["migrate"]["image"]
    )
    assert _programs(services["auth"]) == ["tessera_auth"]
    assert _programs(services["resource"]) == ["tessera_resource"]
    assert _programs(services["migrate"]) == ["tessera_auth", "tessera_resource"]
    # Only nginx faces the network; the dashboards listen on loopback.
    published = {name for name, service in services.items() if "ports" in service}
    assert published == {"nginx", "prometheus", "grafana"}
    for name in ("prometheus", "grafana"):
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"])
    assert services["nginx"]["ports"] == [f"${{HTTPS_PORT:-8443}}:{HTTPS_PORT}"]


#: Services that run once and exit (their dependents wait for a clean exit).
ONE_SHOT = ("db-roles", "migrate")


def _has_healthcheck(service: dict[str, Any]) -> bool:
    if "healthcheck" in service:
        return not service["healthcheck"].get("disable", False)
    build = service.get("build")
    if build is None:
        return False
    dockerfile = ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
    return "\nHEALTHCHECK " in dockerfile.read_text(encoding="utf-8")


def test_health_checks_gate_start_up() -> None:
    services = compose_raw()["services"]
    # A service without its own build shares the image of the one that builds it.
    by_image = {s["image"]: s for s in services.values() if "build" in s and "image" in s}
    for name, service in services.items():
        effective = {**by_image.get(service.get("image", ""), {}), **service}
        if name not in ONE_SHOT:
            assert _has_healthcheck(effective), f"{name} has no health check"
        for dependency, rule in service.get("depends_on", {}).items():
            condition = rule["condition"]
            if dependency in ONE_SHOT:
                assert condition == "service_completed_successfully", name
            else:
                assert condition == "service_healthy", f"{name} -> {dependency}"
    depends = {name: set(s.get("depends_on", {})) for name, s in services.items()}
    assert depends["db-roles"] == {"postgres"}
    assert depends["migrate"] == {"db-roles"}
    assert {"migrate", "redis"} <= depends["auth"]
    assert {"migrate", "redis", "auth"} <= depends["resource"]
    assert {"auth", "resource"} <= depends["nginx"]
    assert depends["grafana"] == {"prometheus"}


def test_redis_keeps_sessions_across_restarts_with_an_append_only_file() -> None:
    redis = compose_raw()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert "postgres-data" in compose_raw()["volumes"]


# -- secrets ------------------------------------------------------------------------------


def test_compose_refuses_to_start_without_the_secrets_directory() -> None:
    raw = compose_raw()
    with pytest.raises(MissingVariableError, match="SECRETS_DIR"):
        interpolate(raw, {})
    assert required_variables(raw) == {"SECRETS_DIR"}
    # Every secret is read from that directory, so none can be left unset.
    for name, secret in raw["secrets"].items():
        assert secret["file"].startswith("${SECRETS_DIR:?"), name


def test_every_file_variable_names_a_secret_its_service_mounts(compose: dict[str, Any]) -> None:
    used: set[str] = set()
    for name, service in compose["services"].items():
        mounted = set(service.get("secrets", []))
        used |= mounted
        for key, value in service.get("environment", {}).items():
            if key.endswith("_FILE"):
                secret = str(value).removeprefix(SECRETS_IN_CONTAINER)
                assert str(value).startswith(SECRETS_IN_CONTAINER), f"{name}: {key}"
                assert secret in mounted, f"{name}: {key} names {secret}, which it does not mount"
            else:
                # No secret inline: everything secret comes from a file.
                assert not re.search(r"KEY|SECRET|PASSWORD", key), f"{name}: {key} is inline"
    assert used == set(compose["secrets"])
    # The replicas never see the key that decrypts the signing keys, nor the
    # Redis user or the PostgreSQL role that can write credentials.
    replica_secrets = set(compose["services"]["resource"]["secrets"])
    assert not {"key_encryption_key", "redis_auth_url", "database_url"} & replica_secrets
    assert {"redis_replica_url", "database_replica_url"} <= replica_secrets


def test_make_secrets_creates_every_secret_once_and_keeps_them(
    secrets_dir: Path, compose: dict[str, Any]
) -> None:
    files = {name: Path(secret["file"]) for name, secret in compose["secrets"].items()}
    assert all(path.parent == secrets_dir for path in files.values())
    before = {name: path.read_bytes() for name, path in files.items()}
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    subprocess.run([str(MAKE_SECRETS), str(secrets_dir)], check=True, capture_output=True)
    assert {name: path.read_bytes() for name, path in files.items()} == before
    password = before["postgres_password"].decode()
    url = urlsplit(before["database_url"].decode())
    assert (url.scheme, url.hostname, url.password) == ("postgresql", "postgres", password)
    assert len(before["session_hash_key"]) >= 32
    # Redis's users: the ACL file is the one the local stack renders (one rule set).
    passwords = {
        user: (secrets_dir / f"redis_{user.removeprefix('tessera-')}_password").read_text()
        for user in (redis_acl.AUTH_USER, redis_acl.REPLICA_USER)
    }
    passwords[redis_acl.ADMIN] = (secrets_dir / "redis_admin_password").read_text()
    assert before["redis_users_acl"].decode() == redis_acl.render_acl(passwords)
    for user, secret in ((redis_acl.AUTH_USER, "auth"), (redis_acl.REPLICA_USER, "replica")):
        url = urlsplit(before[f"redis_{secret}_url"].decode())
        assert (url.hostname, url.username, url.password) == ("redis", user, passwords[user])
    assert b"BEGIN CERTIFICATE" in before["tls_cert"]
    assert b"PRIVATE KEY" in before["tls_key"]


@pytest.mark.parametrize("service", TESSERA_SERVICES)
def test_the_services_accept_their_compose_environment_as_production_settings(
    service: str, compose: dict[str, Any]
) -> None:
    definition = compose["services"][service]
    environ = {key: str(value) for key, value in definition["environment"].items()}
    assert environ["TESSERA_ENV"] == "production"
    environ = with_secret_files(
        environ, SECRETS_IN_CONTAINER, _service_secret_files(compose, service)
    )
    for program in _programs(definition):
        load_service_settings(program, environ)  # raises ConfigError listing every problem


def test_the_auth_service_admits_the_introspection_client_make_secrets_creates(
    secrets_dir: Path, compose: dict[str, Any]
) -> None:
    auth = compose["services"]["auth"]
    environ = with_secret_files(
        {key: str(value) for key, value in auth["environment"].items()},
        SECRETS_IN_CONTAINER,
        _service_secret_files(compose, "auth"),
    )
    settings = load_service_settings("tessera_auth", environ)
    assert isinstance(settings, Settings)
    secret = (secrets_dir / "introspection_client_secret").read_text()
    assert len(secret) >= 32
    assert settings.introspection_clients == ((INTROSPECTION_CLIENT_ID, secret.encode()),)
    # Only the auth service reads the list; nobody else mounts it.
    mounting = [
        n for n, s in compose["services"].items() if "introspection_clients" in s.get("secrets", [])
    ]
    assert mounting == ["auth"]


def test_compose_uses_only_variables_the_services_read() -> None:
    names: set[str] = set()
    for service in compose_raw()["services"].values():
        names |= set(service.get("environment", {}))
    assert {"DATABASE_URL_FILE", "REDIS_URL_FILE", "TESSERA_SESSION_HASH_KEY_FILE"} <= names
    assert not unknown_settings(names)


def test_every_variable_can_come_from_a_file(tmp_path: Path) -> None:
    # compose and Kubernetes pass the connection URLs as *_FILE secrets, which
    # the services read like any other variable.
    (tmp_path / "db").write_text("postgresql://tessera:pw@postgres:5432/tessera\n")
    (tmp_path / "redis").write_text("redis://redis:6379/3\n")
    environ = {
        "TESSERA_ENV": "development",
        "DATABASE_URL_FILE": str(tmp_path / "db"),
        "REDIS_URL_FILE": str(tmp_path / "redis"),
        "TESSERA_AUTH_URL": "http://auth:8080",
    }
    for program in ("tessera_auth", "tessera_resource"):
        settings = load_service_settings(program, environ)
        assert settings.database_url == "postgresql://tessera:pw@postgres:5432/tessera"
        redis_url = (
            settings.redis_url if isinstance(settings, Settings) else settings.verify.redis_url
        )
        assert redis_url == "redis://redis:6379/3"


# -- nginx ----------------------------------------------------------------------------------


def _dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """Each stage's (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    for line in re.sub(r"\\\n", " ", path.read_text(encoding="utf-8")).splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        word, _, rest = stripped.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), " ".join(rest.split())))
    return stages


@pytest.fixture(scope="module")
def image_nginx_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The nginx image's configuration, rendered by the image's render command."""
    out = tmp_path_factory.mktemp("image") / "out"
    program, *args = shlex.split(RENDER_COMMAND)
    assert program == "python"
    result = subprocess.run(
        [SYSTEM_PYTHON, *(str(out) if arg == "/out" else arg for arg in args)],
        cwd=ROOT / RENDER_WORKDIR,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_the_nginx_image_renders_with_the_command_the_tests_run() -> None:
    render, final = _dockerfile_stages(NGINX_DOCKERFILE)
    assert render[0] == ("FROM", "python:3.11.11-slim-bookworm AS render")
    assert [args for word, args in render if word == "COPY"] == [
        f"{source} /src/{source}" for source in RENDER_SOURCES
    ]
    assert ("WORKDIR", f"/src/{RENDER_WORKDIR}") in render
    assert [args for word, args in render if word == "RUN"] == [RENDER_COMMAND]
    assert [args for word, args in final if word == "COPY"] == [
        "--from=render /out/ /etc/nginx/tessera/",
        # the site the rendered config serves at /app/ is where it says it is
        f"deploy/demo-site/ {DEMO_SITE}/",
    ]
    assert f"{DEMO_SITE}/" in render_compose()["protected_app.conf"]


def test_the_image_render_needs_only_the_standard_library_and_matches_the_renderer(
    image_nginx_conf: Path,
) -> None:
    # The system interpreter with -S has no site-packages: a third-party import
    # anywhere under tessera_stack would have failed the render.
    rendered = {path.name: path.read_text("utf-8") for path in image_nginx_conf.iterdir()}
    assert rendered == render_compose()
    assert "nginx.conf" in rendered


def test_compose_nginx_points_at_the_compose_services_and_their_secrets(
    compose: dict[str, Any],
) -> None:
    config = compose_config()
    services = compose["services"]
    assert config.host in services  # the auth upstream: the auth service's name
    for replica in config.replicas:
        assert replica.host == "resource"
        assert replica.port == config.auth_port
    nginx = services["nginx"]
    for path in (config.tls_cert, config.tls_key):
        assert str(path).startswith(SECRETS_IN_CONTAINER)
        assert str(path).removeprefix(SECRETS_IN_CONTAINER) in nginx["secrets"]
    assert nginx["ports"][0].endswith(f":{config.https_port}")
    dockerfile = ROOT / nginx["build"]["dockerfile"]
    assert dockerfile == NGINX_DOCKERFILE
    assert '"/etc/nginx/tessera/nginx.conf"' in dockerfile.read_text()
    # The services listen where the image says.
    tessera_dockerfile = (ROOT / services["migrate"]["build"]["dockerfile"]).read_text()
    assert f"TESSERA_PORT={config.auth_port}" in tessera_dockerfile
    assert services["resource"]["environment"]["TESSERA_AUTH_URL"] == (
        f"http://{config.host}:{config.auth_port}"
    )


def test_nginx_accepts_the_image_config_with_paths_and_hosts_made_local(
    tmp_path: Path, image_nginx_conf: Path
) -> None:
    tls: TlsFiles = ensure_certificate(tmp_path / "tls")
    prefix = tmp_path / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    (prefix / "logs").mkdir()
    conf = prefix / "conf"
    conf.mkdir()
    config = compose_config()
    replacements = {
        str(config.tls_cert): str(tls.cert),
        str(config.tls_key): str(tls.key),
        str(config.nginx_dir): str(prefix),
        # nginx -t resolves upstream names; the containers' are unknown here.
        f"{config.host}:": "127.0.0.1:",
        "resource:": "127.0.0.1:",
    }
    for source in image_nginx_conf.glob("*.conf"):
        text = source.read_text(encoding="utf-8")
        for old, new in replacements.items():
            text = text.replace(old, new)
        (conf / source.name).write_text(text, encoding="utf-8")
    nginx_check(conf / "nginx.conf", prefix)


# -- Prometheus ------------------------------------------------------------------------------


def test_prometheus_finds_auth_and_every_replica_through_compose_dns(
    compose: dict[str, Any],
) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job, service in (("tessera-auth", "auth"), ("tessera-resource", "resource")):
        (discovery,) = jobs[job]["dns_sd_configs"]
        assert discovery["names"] == [service]
        assert service in compose["services"]
        assert discovery["port"] == compose_config().auth_port
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in mounts
