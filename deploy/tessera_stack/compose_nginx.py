"""The nginx configuration ``docker-compose.yml`` runs, rendered from ``nginx/``.

The compose stack uses the same templates as the local stack (round-robin,
rows 4 and 5 of the demonstration), with container paths and names filled
in: nginx listens on 0.0.0.0:8443 inside its container, the auth service is
``auth:8080``, and ``resource:8080`` names every resource replica at once
(Docker's DNS answers with one address per container, and nginx makes each
address an upstream server when it starts or reloads). The TLS certificate
and key are compose secrets; pid, lock and temp files live under
``/tmp/nginx`` so nginx runs as a non-root user.

Nothing rendered is checked in: the nginx image renders the templates when it
is built (the first stage of ``deploy/docker/nginx.Dockerfile``), on a bare
Python with the standard library only (``-S``: no site-packages), from
``deploy/`` next to ``nginx/``::

    python -B -E -S -m tessera_stack.compose_nginx --out /out
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tessera_stack.nginx_conf import NginxConfig, Replica, render

__all__ = [
    "COMPOSE_POLICY",
    "compose_config",
    "main",
    "render_compose",
    "write_compose",
]

COMPOSE_POLICY = "round_robin"
# Inside the nginx container, where the unprivileged user may write.
CONTAINER_PREFIX = Path("/tmp/nginx")  # noqa: S108 - a path in the container, not here
HTTPS_PORT = 8443
SERVICE_PORT = 8080
#: Where the image keeps the static site the portal protects at /app/.
DEMO_SITE = Path("/usr/share/tessera/demo-site")


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
        demo_site=DEMO_SITE,
    )


def render_compose(template_dir: Path | None = None) -> dict[str, str]:
    """The compose nginx configuration, by file name (``nginx.conf`` is the entry file)."""
    return render(compose_config(), template_dir)


def write_compose(directory: Path, template_dir: Path | None = None) -> list[str]:
    """Render into ``directory`` (world-readable: it holds no secret); the names written."""
    files = render_compose(template_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return sorted(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tessera_stack.compose_nginx",
        description="Render nginx/ for docker-compose.yml's nginx image into a directory.",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for nginx.conf and what it includes"
    )
    args = parser.parse_args(argv)
    names = write_compose(args.out)
    print(f"rendered {', '.join(names)} into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
