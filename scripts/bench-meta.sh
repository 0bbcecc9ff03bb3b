#!/usr/bin/env bash
# Metadata benchmark (not a test; issue 22): ferry serve with its records in the embedded redb
# and in PostgreSQL, side by side: round trips per PATCH and per HEAD, HEAD req/s, one-stream
# upload MB/s. Writes the section "Metadata: redb vs PostgreSQL" of docs/benchmarks.md.
#
#   scripts/bench-meta.sh
#
# Starts a throwaway PostgreSQL (scripts/postgres.sh) and stops it on exit, however the run
# ends. Builds the ferry release binary and runs a copy of it; FERRY_BENCH_BIN=PATH runs that
# binary instead. Environment: see scripts/bench/meta.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup-test-deps.sh
command -v ab >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq apache2-utils >/dev/null
}
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench-meta.XXXXXX")"
PGDIR="$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench-pg.XXXXXX")"
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
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
FERRY_BENCH_BIN="$WORK/ferry" FERRY_BENCH_PG="$PG" TMPDIR="$WORK" \
  tests/interop/.venv/bin/python scripts/bench/meta.py "$@"
