#!/usr/bin/env bash
# What the test suite needs besides the Python packages, found or provided before pytest starts (`make test` and
# .ci/run both call this). Idempotent: a second run finds everything and changes nothing.
#
#   PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth)   the storage, queue and migration tests
#   Redis on 127.0.0.1:6379                                    the queue and job tests
#   docker-compose (Debian's package)                          tests/test_compose.py validates docker-compose.yml
#   Chromium at /usr/bin/chromium (Debian's package)           tests/browser (never `playwright install`)
#
# A service that is installed but not answering is started. As root, a missing piece is installed from Debian's
# packages; otherwise (or with STUDIO_SETUP_INSTALL=0) the script prints one line per missing piece with the exact
# command to run, and exits non-zero so that pytest never starts on a machine that would fail for want of a service.
# STUDIO_TEST_POSTGRES_URL / STUDIO_TEST_REDIS_URL point the tests at other servers: their local checks are skipped.
set -uo pipefail

CHROMIUM=${STUDIO_CHROMIUM:-/usr/bin/chromium}
PG_PORT=5432
REDIS_PORT=6379
missing=()

say() { echo "test-services: $*" >&2; }

can_install() {
    [ "${STUDIO_SETUP_INSTALL:-1}" != 0 ] && [ "$(id -u)" = 0 ]
}

# A refreshed package list is fetched only when the first install attempt fails (a new machine has none).
apt_install() {
    say "installing $* (Debian packages)"
    local install=(apt-get install -y -qq --no-install-recommends "$@")
    DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null 2>&1 && return 0
    apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null 2>&1
}

answers() {  # a TCP connect to 127.0.0.1:$1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_answers() {  # up to 30 s for a freshly started server
    local i
    for i in $(seq 60); do answers "$1" && return 0; sleep 0.5; done
    return 1
}

# Debian's cluster listens on 127.0.0.1 with password auth; the tests connect as postgres without one.
trust_local_postgres() {
    local hba
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
        [ -f "$hba" ] || continue
        grep -q "^host all postgres 127.0.0.1/32 trust" "$hba" && continue
        sed -i '1i host all postgres 127.0.0.1/32 trust  # added by distill-studio scripts/test-services.sh' "$hba"
    done
}

start_postgres() {
    service postgresql start >/dev/null 2>&1 && return 0
    local cluster
    for cluster in /etc/postgresql/*/main; do
        [ -d "$cluster" ] || continue
        pg_ctlcluster "$(basename "$(dirname "$cluster")")" main start >/dev/null 2>&1 && return 0
    done
    return 1
}

ensure_postgres() {
    [ -n "${STUDIO_TEST_POSTGRES_URL:-}" ] && return 0
    answers "$PG_PORT" && return 0
    local installed=0
    ls /etc/postgresql/*/main >/dev/null 2>&1 && installed=1
    if ! can_install; then
        if [ "$installed" = 1 ]; then
            missing+=("PostgreSQL is not answering on 127.0.0.1:$PG_PORT: run \`sudo service postgresql start\`")
        else
            missing+=("PostgreSQL is not installed: run \`sudo apt-get install -y postgresql\`, then allow the postgres user from 127.0.0.1 without a password (pg_hba.conf: host all postgres 127.0.0.1/32 trust)")
        fi
        return 0
    fi
    if [ "$installed" = 0 ]; then
        apt_install postgresql || { missing+=("PostgreSQL could not be installed: run \`apt-get install -y postgresql\`"); return 0; }
        trust_local_postgres
    fi
    say "starting PostgreSQL"
    start_postgres && wait_answers "$PG_PORT" \
        || missing+=("PostgreSQL did not start on 127.0.0.1:$PG_PORT: run \`service postgresql start\` and read its log")
}

ensure_redis() {
    [ -n "${STUDIO_TEST_REDIS_URL:-}" ] && return 0
    answers "$REDIS_PORT" && return 0
    if ! command -v redis-server >/dev/null; then
        if ! can_install; then
            missing+=("Redis is not installed: run \`sudo apt-get install -y redis-server\`")
            return 0
        fi
        apt_install redis-server || { missing+=("Redis could not be installed: run \`apt-get install -y redis-server\`"); return 0; }
    elif ! can_install; then
        missing+=("Redis is not answering on 127.0.0.1:$REDIS_PORT: run \`sudo service redis-server start\` (or \`redis-server --daemonize yes\`)")
        return 0
    fi
    say "starting Redis"
    { service redis-server start >/dev/null 2>&1 || redis-server --daemonize yes >/dev/null 2>&1; } && wait_answers "$REDIS_PORT" \
        || missing+=("Redis did not start on 127.0.0.1:$REDIS_PORT: run \`redis-server --daemonize yes\` and read its output")
}

ensure_package() {  # ensure_package PACKAGE PRESENT-CHECK...
    local package=$1; shift
    "$@" && return 0
    if ! can_install; then
        missing+=("$package is missing: run \`sudo apt-get install -y $package\`")
        return 0
    fi
    apt_install "$package" && "$@" || missing+=("$package could not be installed: run \`apt-get install -y $package\`")
}

has_command() { command -v "$1" >/dev/null; }

ensure_postgres
ensure_redis
ensure_package docker-compose has_command docker-compose
ensure_package chromium test -x "$CHROMIUM"

if [ "${#missing[@]}" -gt 0 ]; then
    for line in "${missing[@]}"; do say "$line"; done
    say "the tests need these; nothing was run"
    exit 1
fi
