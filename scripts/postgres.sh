#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests and benchmarks (Debian's postgresql package,
# installed by scripts/setup-test-deps.sh; the system's own cluster is never touched).
#
#   scripts/postgres.sh start DIR   # initdb into DIR (first time), start on a free port;
#                                   # prints the URL, postgres://postgres@127.0.0.1:PORT/postgres
#                                   # (again on DIR: the same port and data)
#   scripts/postgres.sh stop DIR    # fast shutdown of the one started on DIR
#   scripts/postgres.sh kill DIR    # immediate shutdown (no checkpoint: recovery at next start)
#
# As root the cluster runs as the unprivileged user postgres (PostgreSQL refuses root), so
# DIR is handed to that user. Trust authentication on 127.0.0.1 and a socket in DIR only.
# fsync and synchronous_commit stay on: what ferry acknowledges is on disk, as in production.
set -euo pipefail
cmd=${1:-} dir=${2:-}
[[ -n $cmd && -n $dir ]] || { echo "usage: $0 start|stop|kill DIR" >&2; exit 2; }

bin=""
for d in /usr/lib/postgresql/*/bin; do
  [[ -x $d/initdb ]] && bin=$d
done
[[ -n $bin ]] || { echo "postgres.sh: no PostgreSQL server (apt-get install postgresql; scripts/setup-test-deps.sh does)" >&2; exit 1; }

as_pg() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case $cmd in
start)
  mkdir -p "$dir"
  [[ "$(id -u)" == 0 ]] && chown postgres: "$dir"
  if [[ ! -f $dir/data/PG_VERSION ]]; then
    as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { echo "postgres.sh: initdb failed:" >&2; tail -20 "$dir/initdb.log" >&2; exit 1; }
  fi
  # A port picked free can be taken before the server binds it (tests start clusters in
  # parallel): then another is picked.
  picked=0
  for attempt in 1 2 3 4 5; do
    if [[ -f $dir/port ]]; then
      port=$(cat "$dir/port")
    else
      picked=1
      port=$(python3 - <<'PY'
import random, socket
while True:
    p = random.randint(10000, 22000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
PY
)
      echo "$port" >"$dir/port"
    fi
    # What this attempt adds to the log (pg_ctl appends to it at every start).
    logged=$(stat -c %s "$dir/data/log" 2>/dev/null || echo 0)
    # Connections: every test server opens a pool of its own, and many run at once.
    if as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/log" -w -t 60 start \
      -o "-p $port -k $dir/data -h 127.0.0.1 -c max_connections=400 -c shared_buffers=64MB \
          -c shared_preload_libraries=pg_stat_statements" >/dev/null; then
      break
    fi
    # A port picked by this start and taken meanwhile: another. A port of an earlier start on
    # DIR is kept (whoever restarts a cluster expects its URL back).
    if ((picked && attempt < 5)) && tail -c +$((logged + 1)) "$dir/data/log" \
      | grep -q "could not bind\|Address already in use"; then
      rm -f "$dir/port"
      continue
    fi
    echo "postgres.sh: pg_ctl start failed:" >&2
    tail -20 "$dir/data/log" >&2
    exit 1
  done
  echo "postgres://postgres@127.0.0.1:$port/postgres"
  ;;
stop | kill)
  mode=fast
  [[ $cmd == kill ]] && mode=immediate
  if [[ -f $dir/data/postmaster.pid ]]; then
    as_pg "$bin/pg_ctl" -D "$dir/data" -m "$mode" -w -t 30 stop >/dev/null 2>&1 || true
  fi
  ;;
*) echo "usage: $0 start|stop|kill DIR" >&2; exit 2 ;;
esac
