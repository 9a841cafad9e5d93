#!/usr/bin/env bash
# Start (or reuse) a throw-away PostgreSQL server for the store tests and print the URL:
#
#   eval "$(bash scripts/ci_postgres.sh)"      # sets R3MEM_TEST_PG_URL
#   PYTHONPATH=src pytest tests/test_store.py   # now also runs the PostgreSQL backend
#   bash scripts/ci_postgres.sh stop            # stop the server (add "purge" to delete its files)
#
# Under `set -e`, prefer `pg_env=$(bash scripts/ci_postgres.sh) && eval "$pg_env"`: a failing
# command substitution inside eval "$(...)" does not stop the job.
#
# Why a private cluster: CI machines and containers rarely run a usable server, and tests must
# not touch a real one. The cluster lives in $R3MEM_PG_DIR (default /tmp/r3mem-ci-pg, which the
# postgres user must be able to reach), listens on 127.0.0.1 only, on a free port, with trust
# authentication (it holds nothing but test data). Running the script again reuses a running
# cluster, restarts a stopped one, and rebuilds a damaged one: it is safe to call repeatedly.
# PostgreSQL is installed from Debian packages if no initdb/pg_ctl is found. As root the server
# runs as the `postgres` user (PostgreSQL refuses to run as root).
#
# Only the `export ...` line (and a comment) go to stdout; progress goes to stderr.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # runuser lives in /usr/sbin, missing from some CI PATHs

PG_DIR=${R3MEM_PG_DIR:-/tmp/r3mem-ci-pg}
PG_DB=${R3MEM_PG_DB:-r3mem_test}
PG_SUPERUSER=postgres
DATA="$PG_DIR/data"
LOG="$PG_DIR/server.log"

log() { echo "ci_postgres: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Newest PostgreSQL bin directory: PATH first, then Debian's versioned layout.
find_bindir() {
    local initdb
    initdb=$(command -v initdb 2>/dev/null || true)
    if [ -n "$initdb" ]; then
        dirname "$(readlink -f "$initdb")"
        return
    fi
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

install_postgres() {
    [ "$(id -u)" -eq 0 ] || die "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)"
    command -v apt-get >/dev/null || die "PostgreSQL is not installed and apt-get is not available"
    log "installing PostgreSQL from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
}

# Run a command as the server's owner: the postgres user when we are root, else ourselves.
# fd 9 (our flock) is closed for it: a server inheriting it would hold the lock forever.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@" 9>&-
    else
        "$@" 9>&-
    fi
}

free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    local port
    for _ in $(seq 50); do
        port=$((20000 + RANDOM % 40000))
        if ! (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    die "no free TCP port found"
}

PIDFILE="$DATA/postmaster.pid"

# Whether the postmaster named in postmaster.pid is alive. Not `pg_ctl status`: after a crash it
# is fooled by a zombie or a reused pid.
postmaster_alive() {
    local pid
    pid=$(head -n 1 "$PIDFILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/status" ] || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q postgres
}

server_port() { sed -n 4p "$PIDFILE"; }  # line 4 of postmaster.pid is the port

# Running = alive and answering; a live postmaster still starting up gets 20 s.
is_running() {
    postmaster_alive || return 1
    local _
    for _ in $(seq 40); do
        as_owner "$BIN/pg_isready" -q -h 127.0.0.1 -p "$(server_port)" && return 0
        postmaster_alive || return 1
        sleep 0.5
    done
    die "a postmaster runs in $DATA but does not answer on port $(server_port); stop it first"
}

init_cluster() {
    log "creating a cluster in $DATA"
    rm -rf "$DATA"
    mkdir -p "$PG_DIR"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$PG_DIR"
    chmod 700 "$PG_DIR"
    as_owner "$BIN/initdb" -D "$DATA" -U "$PG_SUPERUSER" --auth=trust -E UTF8 --no-locale >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
}

start_server() {
    local port attempt
    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        log "starting the server on 127.0.0.1:$port (attempt $attempt)"
        [ -f "$LOG" ] && mv -f "$LOG" "$LOG.prev"  # so that a failure shows only this attempt's log
        if as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$PG_DIR" start >&2; then
            return
        fi
        tail -n 5 "$LOG" >&2 || true
    done
    die "the server did not start; see $LOG"
}

create_database() {
    local port=$1 exists
    exists=$(as_owner "$BIN/psql" -h 127.0.0.1 -p "$port" -U "$PG_SUPERUSER" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")
    if [ "$exists" != 1 ]; then
        log "creating database $PG_DB"
        as_owner "$BIN/createdb" -h 127.0.0.1 -p "$port" -U "$PG_SUPERUSER" "$PG_DB"
    fi
}

stop_server() {
    if postmaster_alive; then
        as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2
    else
        log "no server running in $DATA"
    fi
    if [ "${1:-}" = purge ]; then
        rm -rf "$PG_DIR"
        log "removed $PG_DIR"
    fi
}

main() {
    BIN=$(find_bindir)
    if [ -z "$BIN" ] || [ ! -x "$BIN/pg_ctl" ]; then
        install_postgres
        BIN=$(find_bindir)
        [ -n "$BIN" ] && [ -x "$BIN/pg_ctl" ] || die "PostgreSQL binaries not found after installing"
    fi
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        die "running as root but there is no postgres user to run the server"
    fi

    mkdir -p "$(dirname "$PG_DIR")"
    # One invocation at a time: two concurrent CI steps must not both run initdb.
    exec 9>"$PG_DIR.lock"
    flock 9

    if [ "${1:-}" = stop ]; then
        stop_server "${2:-}"
        return
    fi
    if ! is_running; then
        # A cluster from another major version or a half-finished initdb cannot be started: rebuild it.
        if [ ! -f "$DATA/PG_VERSION" ] || [ "$(cat "$DATA/PG_VERSION")" != "$("$BIN/postgres" -V | sed -E 's/^[^0-9]*([0-9]+).*/\1/')" ]; then
            init_cluster
        elif [ -f "$PIDFILE" ] && ! postmaster_alive; then
            log "removing the stale postmaster.pid of a server that died"
            rm -f "$PIDFILE"
        fi
        start_server
    else
        log "reusing the running server in $DATA"
    fi
    local port
    is_running || die "the server in $DATA stopped right after starting; see $LOG"
    port=$(server_port)
    create_database "$port"
    echo "export R3MEM_TEST_PG_URL=postgresql+psycopg://$PG_SUPERUSER@127.0.0.1:$port/$PG_DB"
    echo "# stop it with: bash $(readlink -f "$0") stop   (server data in $PG_DIR)"
}

main "$@"
