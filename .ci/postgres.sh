#!/usr/bin/env bash
# Start or stop a throw-away PostgreSQL server on loopback for the tests marked `postgres`.
#   source .ci/postgres.sh && pg_start   -> exports DIFFHPO_TEST_POSTGRES_URL
#   pg_stop
# Installs Debian's postgresql package when the server binaries are missing. Failures are
# reported and leave DIFFHPO_TEST_POSTGRES_URL unset, so those tests skip with a reason.
PG_PORT=${PG_PORT:-55432}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

pg_start() {
  if [ -z "$(pg_bin)" ]; then
    echo "postgres: installing Debian's postgresql package"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
      || { echo "postgres: install failed; postgres tests will skip"; return 0; }
  fi
  local bin; bin=$(pg_bin)
  PG_DATA=$(mktemp -d -t diffhpo-pg.XXXXXX)
  export PG_DATA
  local run=()
  if [ "$(id -u)" = 0 ]; then chown postgres "$PG_DATA"; run=(runuser -u postgres --); fi
  "${run[@]}" "$bin/initdb" -D "$PG_DATA" -A trust -U postgres >/dev/null \
    && "${run[@]}" "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w \
         -o "-p $PG_PORT -k $PG_DATA -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null \
    && "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres diffhpo_test \
    || { echo "postgres: could not start a server; postgres tests will skip"; return 0; }
  export DIFFHPO_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$PG_PORT/diffhpo_test"
  echo "postgres: server on 127.0.0.1:$PG_PORT, database diffhpo_test"
}

pg_stop() {
  [ -n "${PG_DATA:-}" ] || return 0
  local run=()
  [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
  "${run[@]}" "$(pg_bin)/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$PG_DATA"
}
