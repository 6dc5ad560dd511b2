#!/usr/bin/env bash
# PostgreSQL and RabbitMQ for local runs, tests and benchmarks: installed from Debian's
# packages when missing, started on loopback, reused when already running. The C
# toolchain the Rust build needs is installed here too when missing: every command that
# builds runs `up` first.
#
#   scripts/services.sh up        install if needed, start, create the database; idempotent
#   scripts/services.sh down      stop both
#   scripts/services.sh env       print the environment for clients (eval "$(… env)")
#   scripts/services.sh status
#   scripts/services.sh broker-stop | broker-start   take RabbitMQ's AMQP side away and back
set -euo pipefail

STATE=${ANCHORPIPE_STATE_DIR:-/tmp/anchorpipe}
PG_PORT=${ANCHORPIPE_PG_PORT:-55432}
PG_DATA=$STATE/pg
PG_SOCK=$STATE/pg-run
PG_USER=anchorpipe
PG_PASSWORD=anchorpipe
PG_DB=anchorpipe
# A fixed node name that resolves without relying on the machine's hostname.
export RABBITMQ_NODENAME=${RABBITMQ_NODENAME:-rabbit@localhost}
AMQP_PORT=5672
# The management HTTP API: the operator creates and removes each tenant's broker user
# through it (issue 9), so it is part of what the platform needs.
MGMT_PORT=${ANCHORPIPE_RABBITMQ_MGMT_PORT:-15672}
RABBIT_CONF=$STATE/rabbitmq.conf

log() { printf '[services] %s\n' "$*" >&2; }

pg_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
    [ -n "$dir" ] && echo "$dir"
}

as_postgres() { runuser -u postgres -- "$@"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install_packages() {
    local missing=()
    [ -n "$(pg_bin)" ] || missing+=(postgresql)
    command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    # The build compiles C: ring (TLS) with cc, the ingest binary's allocator (jemalloc)
    # with its configure script and make.
    command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
    command -v make >/dev/null 2>&1 || missing+=(make)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} (apt)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # policy-rc.d keeps the packages from starting system-wide services we don't use.
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

pg_up() {
    local bin; bin=$(pg_bin)
    if ! "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
        pg_start "$bin"
    fi
    pg_setup "$bin"
}

pg_start() {
    local bin=$1
    mkdir -p "$STATE" "$PG_SOCK"
    chown postgres:postgres "$PG_SOCK"
    if [ ! -s "$PG_DATA/PG_VERSION" ]; then
        log "initialising PostgreSQL in $PG_DATA"
        mkdir -p "$PG_DATA"; chown postgres:postgres "$PG_DATA"; chmod 700 "$PG_DATA"
        as_postgres "$bin/initdb" -D "$PG_DATA" -U postgres --auth-local=trust \
            --auth-host=scram-sha-256 -E UTF8 >/dev/null
        # Many test databases at once (#[sqlx::test] makes one per test).
        cat >>"$PG_DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
max_connections = 400
shared_buffers = 256MB
CONF
    fi
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    as_postgres "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_SOCK/postgres.log" -w -t 60 start >/dev/null
}

# Roles and the database; each step only when missing, so a second run is quick.
pg_setup() {
    local bin=$1
    local psql=("$bin/psql" -h "$PG_SOCK" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt)
    if [ "$(as_postgres "${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" != 1 ]; then
        as_postgres "${psql[@]}" -c "CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
    fi
    # The owner role creates each tenant's login role (the operator mints them) and the
    # shared group role the migrations grant to; CREATEROLE is what that takes.
    if [ "$(as_postgres "${psql[@]}" -c "SELECT rolcreaterole FROM pg_roles WHERE rolname = '$PG_USER'")" != t ]; then
        as_postgres "${psql[@]}" -c "ALTER ROLE $PG_USER CREATEROLE"
    fi
    if [ "$(as_postgres "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
        as_postgres "${psql[@]}" -c "CREATE DATABASE $PG_DB OWNER $PG_USER"
    fi
}

rabbit_up() {
    if port_open "$AMQP_PORT" && port_open "$MGMT_PORT"; then
        return 0
    fi
    mkdir -p "$STATE"
    printf 'management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = %s\n' "$MGMT_PORT" >"$RABBIT_CONF"
    # Enabled in the node's plugin file before it starts, or online when it already runs
    # (the CLI starts an Erlang VM, so only when the plugin is not enabled yet).
    if ! grep -qs rabbitmq_management /etc/rabbitmq/enabled_plugins; then
        rabbitmq-plugins -q --offline enable rabbitmq_management >/dev/null
    fi
    if port_open "$AMQP_PORT" && ! port_open "$MGMT_PORT"; then
        rabbitmq-plugins -q enable rabbitmq_management >/dev/null
    fi
    if rabbitmqctl -q status >/dev/null 2>&1; then
        # The node runs but its AMQP side was stopped (broker-stop).
        rabbitmqctl -q start_app >/dev/null
    else
        log "starting RabbitMQ ($RABBITMQ_NODENAME) on 127.0.0.1:$AMQP_PORT"
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_CONFIG_FILE="$RABBIT_CONF" rabbitmq-server -detached >/dev/null 2>&1 || true
    fi
    local i
    for i in $(seq 1 120); do
        if port_open "$AMQP_PORT" && port_open "$MGMT_PORT"; then
            return 0
        fi
        sleep 0.5
    done
    log "RabbitMQ did not open ports $AMQP_PORT and $MGMT_PORT; see /var/log/rabbitmq/"
    return 1
}

env_out() {
    cat <<ENV
export DATABASE_URL='postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB'
export AMQP_URL='amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f'
export RABBITMQ_NODENAME='$RABBITMQ_NODENAME'
export RABBITMQ_MANAGEMENT_URL='http://guest:guest@127.0.0.1:$MGMT_PORT'
ENV
}

case "${1:-}" in
    up)
        install_packages
        pg_up
        rabbit_up
        log "up: PostgreSQL 127.0.0.1:$PG_PORT, RabbitMQ 127.0.0.1:$AMQP_PORT (management $MGMT_PORT)"
        ;;
    down)
        bin=$(pg_bin)
        if [ -n "$bin" ] && [ -s "$PG_DATA/postmaster.pid" ]; then
            as_postgres "$bin/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null || true
        fi
        rabbitmqctl -q stop >/dev/null 2>&1 || true
        log "down"
        ;;
    env) env_out ;;
    status)
        bin=$(pg_bin)
        "$bin/pg_isready" -h 127.0.0.1 -p "$PG_PORT" || true
        if port_open "$AMQP_PORT"; then echo "rabbitmq: accepting on $AMQP_PORT"; else echo "rabbitmq: down"; fi
        ;;
    broker-stop) rabbitmqctl -q stop_app >/dev/null ;;
    broker-start) rabbitmqctl -q start_app >/dev/null ;;
    *)
        echo "usage: $0 up|down|env|status|broker-stop|broker-start" >&2
        exit 2
        ;;
esac
