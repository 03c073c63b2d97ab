#!/usr/bin/env bash
# Create the secrets docker-compose.yml reads from $SECRETS_DIR, once:
#   deploy/compose/make-secrets.sh .secrets && echo SECRETS_DIR=.secrets >> .env
#
#   session_hash_key, key_encryption_key   TESSERA_*_FILE (64 random characters each)
#   postgres_password, database_url        POSTGRES_PASSWORD_FILE and DATABASE_URL_FILE
#   postgres_replica_password,             the replicas' own role (deploy/roles/
#     database_replica_url                   postgres-replica-role.sql), their DATABASE_URL_FILE
#   redis_{admin,auth,replica}_password    the Redis users' passwords, and from them:
#   redis_users.acl                        Redis's users (deploy/roles/redis-users.acl.template)
#   redis_auth_url, redis_replica_url      REDIS_URL_FILE of auth and of the replicas
#   introspection_client_secret,           the introspection client resource-server (RFC 7662,
#     introspection_clients                  HTTP Basic): its secret, and the auth service's
#                                            TESSERA_INTROSPECTION_CLIENTS_FILE (id:secret)
#   grafana_admin_password                 GF_SECURITY_ADMIN_PASSWORD__FILE (user admin)
#   tls_cert.pem, tls_key.pem              nginx's certificate: self-signed, for
#                                          localhost and 127.0.0.1 (replace with a real one)
#
# Existing files are kept: running it again creates only what is missing, so
# keys (and with them every session and signing key) survive. The directory is
# 0700; the files in it are 0644 because compose bind-mounts them into
# containers whose users (tessera 10001, nginx 101, postgres 999, grafana 472)
# differ from yours, and the directory alone keeps other local users out.
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
DIR="$1"
command -v openssl >/dev/null 2>&1 || { echo "$0: openssl is needed" >&2; exit 1; }

umask 077
mkdir -p "$DIR"
chmod 0700 "$DIR"

# write NAME VALUE: create $DIR/NAME with VALUE unless it exists.
write() {
    local path="$DIR/$1"
    if [ ! -e "$path" ]; then
        printf '%s' "$2" >"$path"
        echo "created $path"
    fi
    chmod 0644 "$path"
}

random() { openssl rand -hex "$1"; }

write session_hash_key "$(random 32)"
write key_encryption_key "$(random 32)"
write postgres_password "$(random 24)"
write database_url "postgresql://tessera:$(cat "$DIR/postgres_password")@postgres:5432/tessera"
write postgres_replica_password "$(random 24)"
write database_replica_url \
    "postgresql://tessera_replica:$(cat "$DIR/postgres_replica_password")@postgres:5432/tessera"
write grafana_admin_password "$(random 16)"
# A service that validates tokens by introspection authenticates as this client.
write introspection_client_secret "$(random 24)"
write introspection_clients "resource-server:$(cat "$DIR/introspection_client_secret")"

write redis_admin_password "$(random 24)"
write redis_auth_password "$(random 24)"
write redis_replica_password "$(random 24)"
write redis_auth_url "redis://tessera-auth:$(cat "$DIR/redis_auth_password")@redis:6379/0"
write redis_replica_url "redis://tessera-replica:$(cat "$DIR/redis_replica_password")@redis:6379/0"
# The ACL file holds only SHA-256 digests of the passwords; rendered afresh each run.
digest() { printf '%s' "$(cat "$DIR/$1")" | sha256sum | cut -d' ' -f1; }
TEMPLATE="$(dirname "$0")/../roles/redis-users.acl.template"
grep -v '^#' "$TEMPLATE" | grep -v '^$' | sed \
    -e "s/@ADMIN_SHA256@/$(digest redis_admin_password)/" \
    -e "s/@AUTH_SHA256@/$(digest redis_auth_password)/" \
    -e "s/@REPLICA_SHA256@/$(digest redis_replica_password)/" >"$DIR/redis_users.acl"
chmod 0644 "$DIR/redis_users.acl"

if [ ! -e "$DIR/tls_cert.pem" ] || [ ! -e "$DIR/tls_key.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
        -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$DIR/tls_key.pem" -out "$DIR/tls_cert.pem" 2>/dev/null
    echo "created $DIR/tls_cert.pem and $DIR/tls_key.pem (self-signed for localhost)"
fi
chmod 0644 "$DIR/tls_cert.pem" "$DIR/tls_key.pem"
