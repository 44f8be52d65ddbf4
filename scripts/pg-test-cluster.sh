#!/bin/sh
# A throw-away PostgreSQL cluster for the test suite (Debian's postgresql package).
#
#   eval "$(scripts/pg-test-cluster.sh start)"   # exports BURROW_TEST_PG_URL, _PID, _DIR
#   ... run the tests ...
#   scripts/pg-test-cluster.sh stop "$BURROW_TEST_PG_DIR"
#
# The cluster lives in a fresh temporary directory, listens on 127.0.0.1 only (port chosen
# free, or $PG_PORT), uses a random password (scram-sha-256) and fsync=off: it is for tests,
# nothing else. PostgreSQL refuses to run as root, so as root the server runs as the `postgres`
# user (or $PG_USER). Stopping signals exactly the postmaster whose PID the cluster recorded.
set -eu

cmd=${1:-}

find_bin() {
    if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ]; then echo "$d"; return; fi
    done
    echo "pg-test-cluster: no PostgreSQL server found (install Debian's postgresql)" >&2
    exit 2
}

as_user() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "${PG_USER:-postgres}" -- "$@"
    else
        "$@"
    fi
}

case "$cmd" in
start)
    bin=$(find_bin)
    dir=$(mktemp -d "${TMPDIR:-/tmp}/burrow-pg.XXXXXX")
    chmod 700 "$dir"
    if [ "$(id -u)" = 0 ]; then chown "${PG_USER:-postgres}" "$dir"; fi
    port=${PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
    password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    as_user sh -c "umask 077; printf '%s\n' '$password' > '$dir/pwfile'"
    as_user "$bin/initdb" -D "$dir/data" -U burrow --pwfile="$dir/pwfile" \
        --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2; exit 1; }
    rm -f "$dir/pwfile"
    as_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    pid=$(head -n 1 "$dir/data/postmaster.pid")
    echo "export BURROW_TEST_PG_URL='postgresql+asyncpg://burrow:$password@127.0.0.1:$port/postgres'"
    echo "export BURROW_TEST_PG_PID=$pid"
    echo "export BURROW_TEST_PG_DIR='$dir'"
    ;;
stop)
    dir=${2:?usage: pg-test-cluster.sh stop DIR}
    case "$dir" in
    */burrow-pg.*) ;;
    *) echo "pg-test-cluster: $dir is not a burrow test cluster" >&2; exit 2 ;;
    esac
    if [ -f "$dir/data/postmaster.pid" ]; then
        pid=$(head -n 1 "$dir/data/postmaster.pid")
        kill -INT "$pid" 2>/dev/null || true  # fast shutdown
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        if kill -0 "$pid" 2>/dev/null; then kill -QUIT "$pid" 2>/dev/null || true; sleep 0.5; fi
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: pg-test-cluster.sh start | stop DIR" >&2
    exit 2
    ;;
esac
