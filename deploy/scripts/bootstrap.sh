#!/usr/bin/env bash
# Prepare a Debian/Ubuntu machine to run tessera locally, and with --dev to test,
# lint and benchmark it:
#   deploy/scripts/bootstrap.sh [--dev] [--prometheus]
#   - the Debian packages the stack runs (PostgreSQL, Redis, nginx, openssl,
#     curl), and Prometheus (the server and promtool) with --dev (the tests
#     lint /metrics and scrape a stack) or --prometheus (`make up MONITORING=1`),
#     and Chromium and wrk with --dev (the browser tests, the bench's smoke
#     tests), installed only when missing;
#   - .venv with Python >= 3.11, created only when missing;
#   - the workspace's packages (services/*, deploy, demo: one pyproject.toml
#     each) installed editable: only their runtime dependencies (what `make up`
#     needs), or with --dev also the root's dev tools (pytest, ruff, mypy,
#     matplotlib, ...). Rerun only when a pyproject.toml changed or dev tools are
#     wanted that are not there: .venv/.tessera-installed keeps the sha256 of the
#     pyproject.toml files and which install it was (runtime or dev; a dev
#     install serves a runtime request too).
# Idempotent and silent on success. Run as root or as a user with sudo
# (needed only when packages are missing).
#
# The stack starts its own PostgreSQL and Redis on free ports, so the system
# services that the Debian packages come with are never used; they are kept
# from starting during the install here, and neither their presence nor
# their absence changes anything.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.tessera-installed"
MIN_PYTHON="3.11"
POLICY_RC=/usr/sbin/policy-rc.d
cd "$ROOT"

DEV=0
PROMETHEUS=0
for argument in "$@"; do
    case "$argument" in
        --dev) DEV=1 PROMETHEUS=1 ;;
        --prometheus) PROMETHEUS=1 ;;
        *)
            echo "usage: $0 [--dev] [--prometheus]" >&2
            exit 2
            ;;
    esac
done

LOG="$(mktemp "${TMPDIR:-/tmp}/tessera-bootstrap.XXXXXX")"
POLICY_CREATED=0

cleanup() {
    if [ "$POLICY_CREATED" -eq 1 ]; then
        as_root rm -f "$POLICY_RC" || true
    fi
    rm -f "$LOG"
}
trap cleanup EXIT

die() {
    echo "bootstrap: $*" >&2
    exit 1
}

# Run a command with its output in $LOG; show that output only on failure.
quietly() {
    : >"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        cat "$LOG" >&2
        die "failed: $*"
    fi
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "root (or sudo) is needed to run: $*"
    fi
}

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

have_postgres_server() {
    local bindir
    for bindir in /usr/lib/postgresql/*/bin; do
        if [ -x "$bindir/initdb" ] && [ -x "$bindir/postgres" ]; then
            return 0
        fi
    done
    have initdb && have postgres
}

# The first python that is at least $MIN_PYTHON, or nothing.
find_python() {
    local candidate
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c "import sys; sys.exit(sys.version_info < (${MIN_PYTHON/./, }))" \
                >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 0
}

install_packages() {
    if [ ! -e "$POLICY_RC" ]; then
        # Debian's convention for "do not start services from maintainer
        # scripts" (exit 101: action forbidden); removed again on exit.
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $POLICY_RC && chmod 755 $POLICY_RC"
        POLICY_CREATED=1
    fi
    quietly as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    quietly as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "$@"
}

# -- system packages ----------------------------------------------------------

missing=()
have redis-server || missing+=(redis-server)
have_postgres_server || missing+=(postgresql)
have nginx || missing+=(nginx)  # "nginx" exists in every Debian/Ubuntu release; -light not in all
have openssl || missing+=(openssl)
have curl || missing+=(curl)
have jq || missing+=(jq)  # README's quick start reads the tokens with it
# promtool and the Prometheus server: the tests lint /metrics and scrape the stack;
# `make up MONITORING=1` runs the server.
if [ "$PROMETHEUS" -eq 1 ]; then
    have promtool || missing+=(prometheus)
fi
# Debian's Chromium: the browser tests drive it through Playwright
# (tests/browser.py), which never downloads a browser of its own.
if [ "$DEV" -eq 1 ]; then
    have chromium || missing+=(chromium)
    # wrk: the bench's load generator, which the bench's smoke tests run too.
    have wrk || missing+=(wrk)
fi

PYTHON="$(find_python)"
if [ -z "$PYTHON" ]; then
    missing+=(python3 python3-venv)
elif [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then
    # Debian splits venv/ensurepip out of the interpreter package.
    missing+=("python$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv")
fi

if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 ||
        die "missing ${missing[*]} and no apt-get: install them by hand"
    install_packages "${missing[@]}"
fi

# -- virtualenv and the project -----------------------------------------------

if [ ! -x "$VENV/bin/python" ]; then
    PYTHON="${PYTHON:-$(find_python)}"
    [ -n "$PYTHON" ] || die "no Python >= $MIN_PYTHON found (python3 is $(python3 --version 2>&1))"
    quietly "$PYTHON" -m venv "$VENV"
    rm -f "$STAMP"
fi
"$VENV/bin/python" -c "import sys; sys.exit(sys.version_info < (${MIN_PYTHON/./, }))" ||
    die "$VENV uses Python < $MIN_PYTHON: remove it and run this again"

# The members first: pip takes a dependency named like a project given here
# (tessera-verify, ...) from that directory, never from an index.
MEMBERS=(services/verify services/platform services/auth services/resource deploy demo)
digest="$(cat pyproject.toml "${MEMBERS[@]/%//pyproject.toml}" | sha256sum | cut -d' ' -f1)"
installed="$(cat "$STAMP" 2>/dev/null || true)"
# The stamp is "<digest> runtime" or "<digest> dev"; a bare digest is a dev
# install from before the two kinds.
installed_digest="${installed%% *}"
installed_kind=none
if [ -n "$installed" ]; then
    installed_kind=dev
    [[ "$installed" != *" "* ]] || installed_kind="${installed#* }"
fi
# A dev venv stays one: a runtime request never takes the tools away.
kind=runtime
if [ "$DEV" -eq 1 ] || [ "$installed_kind" = dev ]; then
    kind=dev
fi
if [ "$installed_digest" != "$digest" ] || [ "$installed_kind" != "$kind" ]; then
    editable=()
    for member in "${MEMBERS[@]}"; do
        editable+=(-e "./$member")
    done
    if [ "$kind" = dev ]; then
        editable+=(-e '.[dev]')
    fi
    quietly "$VENV/bin/python" -m pip install --disable-pip-version-check -q "${editable[@]}"
    echo "$digest $kind" >"$STAMP"
fi
