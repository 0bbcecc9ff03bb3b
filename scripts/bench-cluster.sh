#!/usr/bin/env bash
# Cluster benchmark (not a test; issue 23): 1, 2 and 3 ferry serve instances sharing one
# PostgreSQL and one SeaweedFS, 8 concurrent 256 MiB uploads: aggregate MB/s and the CPU of
# every component. Writes the section "Cluster: 1, 2 and 3 instances" of docs/benchmarks.md.
#
#   scripts/bench-cluster.sh
#
# Starts a throwaway PostgreSQL (scripts/postgres.sh) and a SeaweedFS per run
# (scripts/seaweedfs.sh), and stops them on exit, however the run ends. Builds the ferry
# release binary and runs a copy of it; FERRY_BENCH_BIN=PATH runs that binary instead.
# Environment: see scripts/bench/cluster.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup-test-deps.sh
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench-cluster.XXXXXX")"
PGDIR="$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench-pg.XXXXXX")"
py_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [[ -n $py_pid ]] && kill -0 "$py_pid" 2>/dev/null; then
    kill -TERM "$py_pid" 2>/dev/null || true
    wait "$py_pid" 2>/dev/null || true
  fi
  for d in "$WORK"/weed-*; do
    [[ -d $d ]] && bash scripts/seaweedfs.sh stop "$d" >/dev/null 2>&1 || true
  done
  pkill -KILL -f "$WORK/ferry serve" 2>/dev/null || true
  bash scripts/postgres.sh kill "$PGDIR" >/dev/null 2>&1 || true
  rm -rf "$WORK" "$PGDIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
if [[ -n ${FERRY_BENCH_BIN:-} ]]; then
  cp "$FERRY_BENCH_BIN" "$WORK/ferry"
else
  cargo build --release -p ferry
  cp target/release/ferry "$WORK/ferry"
fi
PG="$(bash scripts/postgres.sh start "$PGDIR")"
FERRY_BENCH_BIN="$WORK/ferry" FERRY_BENCH_PG="$PG" FERRY_BENCH_PG_DIR="$PGDIR" \
  FERRY_BENCH_WORK="$WORK" TMPDIR="$WORK" \
  tests/interop/.venv/bin/python scripts/bench/cluster.py "$@" &
py_pid=$!
wait "$py_pid"
