#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL on a free loopback port, then stop it.
# Exports DATACAT_TEST_POSTGRES_URL for the tests. Touches no system cluster; needs no password.
set -euo pipefail

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$pg_bin" ]; then
  echo "with-postgres: PostgreSQL is not installed (scripts/install-system-deps.sh installs it)" >&2
  exit 1
fi
dir=$(mktemp -d /tmp/datacat-pg.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chown postgres "$dir" 2>/dev/null || true
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }

stop() {
  as_pg "$pg_bin/pg_ctl -D $dir/data -m fast stop" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT

as_pg "$pg_bin/initdb -D $dir/data -A trust -U postgres" >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; exit 1; }
as_pg "$pg_bin/pg_ctl -D $dir/data -o '-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off' -l $dir/log -w start" >/dev/null \
  || { cat "$dir/log" >&2; exit 1; }
export DATACAT_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$port/postgres"
echo "with-postgres: PostgreSQL on 127.0.0.1:$port"
"$@"
