# nginx for docker-compose.yml: the templates in nginx/, rendered for compose
# by tessera_stack.compose_nginx while the image is built (nothing rendered is
# checked in). Runs as the image's unprivileged nginx user (uid 101):
# everything it writes is under /tmp/nginx, and it listens on 8443. The TLS
# certificate and key arrive as compose secrets in /run/secrets/.
#   docker build -f deploy/docker/nginx.Dockerfile -t tessera-nginx:local .

# The renderer needs the standard library only: -S leaves site-packages out,
# -E ignores PYTHON* variables, -B writes no bytecode. tests/test_deploy_compose.py
# runs this same command with the system Python and nginx -t on its output.
FROM python:3.11.11-slim-bookworm AS render
COPY nginx/ /src/nginx/
COPY deploy/tessera_stack/ /src/deploy/tessera_stack/
WORKDIR /src/deploy
RUN python -B -E -S -m tessera_stack.compose_nginx --out /out

FROM nginx:1.27.3-alpine
RUN mkdir -p /tmp/nginx/tmp /tmp/nginx/logs \
    && ln -sf /dev/stdout /tmp/nginx/logs/nginx-access.log \
    && chown -R nginx:nginx /tmp/nginx
COPY --from=render /out/ /etc/nginx/tessera/
# The app the portal protects at /app/ (compose_nginx.DEMO_SITE).
COPY deploy/demo-site/ /usr/share/tessera/demo-site/
USER 101:101
EXPOSE 8443
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["wget", "-q", "-O", "/dev/null", "--no-check-certificate", "https://127.0.0.1:8443/nginx-health"]
# SIGQUIT: graceful shutdown (requests in flight finish).
STOPSIGNAL SIGQUIT
CMD ["nginx", "-c", "/etc/nginx/tessera/nginx.conf"]
