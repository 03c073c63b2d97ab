"""The nginx configuration ``docker-compose.yml`` runs, rendered from ``nginx/``.

The compose stack uses the same templates as the local stack (round-robin,
rows 4 and 5 of the demonstration), with container paths and names filled
in: nginx listens on 0.0.0.0:8443 inside its container, the auth service is
``auth:8080``, and ``resource:8080`` names every resource replica at once
(Docker's DNS answers with one address per container, and nginx makes each
address an upstream server when it starts or reloads). The TLS certificate
and key are compose secrets; pid, lock and temp files live under
``/tmp/nginx`` so nginx runs as a non-root user.

The rendered files are checked in under ``deploy/compose/nginx/`` (the nginx
image copies them); a test checks they are what this module renders::

    python -m tessera_stack.compose_nginx           # rewrite deploy/compose/nginx/
    python -m tessera_stack.compose_nginx --check   # exit 1 when they are stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tessera_stack.nginx_conf import NginxConfig, Replica, default_template_dir, render

__all__ = [
    "COMPOSE_POLICY",
    "compose_config",
    "default_output_dir",
    "main",
    "render_compose",
    "stale_files",
    "write_compose",
]

COMPOSE_POLICY = "round_robin"
# Inside the nginx container, where the unprivileged user may write.
CONTAINER_PREFIX = Path("/tmp/nginx")  # noqa: S108 - a path in the container, not here
HTTPS_PORT = 8443
SERVICE_PORT = 8080


def compose_config() -> NginxConfig:
    """The configuration of the compose stack's nginx container."""
    return NginxConfig(
        policy=COMPOSE_POLICY,
        nginx_dir=CONTAINER_PREFIX,
        # The nginx image links nginx-access.log to its stdout.
        log_dir=CONTAINER_PREFIX / "logs",
        https_port=HTTPS_PORT,
        auth_port=SERVICE_PORT,
        # One name for all replicas: every container address becomes a server.
        replicas=(Replica("r1", SERVICE_PORT, host="resource"),),
        tls_cert=Path("/run/secrets/tls_cert"),
        tls_key=Path("/run/secrets/tls_key"),
        host="auth",
        listen_host="0.0.0.0",
        server_names=("localhost", "_"),
    )


def default_output_dir() -> Path:
    """``deploy/compose/nginx/`` next to the templates' ``nginx/``."""
    return default_template_dir().parent / "deploy" / "compose" / "nginx"


def render_compose(template_dir: Path | None = None) -> dict[str, str]:
    """The compose nginx configuration, by file name (``nginx.conf`` is the entry file)."""
    return render(compose_config(), template_dir)


def stale_files(directory: Path, template_dir: Path | None = None) -> list[str]:
    """Files in ``directory`` that differ from (or are missing from) a fresh rendering."""
    wanted = render_compose(template_dir)
    stale = [
        name
        for name, text in wanted.items()
        if not (directory / name).is_file() or (directory / name).read_text("utf-8") != text
    ]
    extra = [path.name for path in directory.glob("*.conf") if path.name not in wanted]
    return sorted(stale + extra)


def write_compose(directory: Path, template_dir: Path | None = None) -> list[str]:
    """Render into ``directory`` (world-readable: it holds no secret); the names written."""
    files = render_compose(template_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.conf"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return sorted(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tessera_stack.compose_nginx",
        description="Render nginx/ for docker-compose.yml into deploy/compose/nginx/.",
    )
    parser.add_argument("--output", type=Path, help="default: deploy/compose/nginx/")
    parser.add_argument(
        "--check", action="store_true", help="only report stale files (exit 1 when any)"
    )
    args = parser.parse_args(argv)
    output: Path = args.output or default_output_dir()
    if args.check:
        if stale := stale_files(output):
            print(f"stale in {output}: {', '.join(stale)}", file=sys.stderr)
            return 1
        print(f"{output} is up to date")
        return 0
    names = write_compose(output)
    print(f"rendered {', '.join(names)} into {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
