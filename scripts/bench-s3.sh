#!/usr/bin/env bash
# S3 upload benchmark (not a test; issue 21): a 1 GiB upload into a one-node SeaweedFS by
#   ferry upload -> ferry serve --store s3://..., aws s3 cp, and
#   tus-js-client -> @tus/server + @tus/s3-store,
# then tus-js-client with small PATCHes into both servers (the cost of requests shorter than
# an S3 part). Alternating rounds, medians with min-max, peak RSS of every server. Writes the
# section "S3: ferry vs aws s3 cp vs @tus/s3-store" of docs/benchmarks.md.
#
#   scripts/bench-s3.sh
#
# Installs what it needs (scripts/setup-test-deps.sh: SeaweedFS, node packages with
# @tus/s3-store; awscli into scripts/bench/.venv-s3 from scripts/bench/requirements-s3.txt),
# builds the ferry release binary (nothing else) and runs a copy of it, so a rebuild during
# the run cannot change it; FERRY_BENCH_BIN=PATH runs that binary instead and builds nothing.
# Every SeaweedFS and server lives in a temp dir and is ended on exit, however the run ends.
# Environment: see scripts/bench/s3.py (FERRY_BENCH_RUNS, FERRY_BENCH_SIZE, FERRY_BENCH_TIMEOUT,
# FERRY_BENCH_S3_CHUNK, FERRY_BENCH_ONLY, FERRY_BENCH_DOC=0 to leave the docs alone, ...).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup-test-deps.sh

# awscli: the benchmark's alone, in a venv of its own (the tests never pay for it).
VENV="$ROOT/scripts/bench/.venv-s3"
REQ="$ROOT/scripts/bench/requirements-s3.txt"
STAMP="$VENV/.ferry-requirements.sha256"
if [[ -d $VENV ]] && ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
  rm -rf "$VENV"
fi
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]]; then
  echo "bench-s3: installing $(realpath --relative-to="$ROOT" "$REQ") into $(realpath --relative-to="$ROOT" "$VENV")"
  rm -f "$STAMP"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$REQ"
  echo "$want" >"$STAMP"
fi
[[ -d tests/interop/node_modules/@tus/s3-store ]] \
  || { echo "bench-s3: @tus/s3-store missing from tests/interop/node_modules" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench-s3.XXXXXX")"
py_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [[ -n $py_pid ]] && kill -0 "$py_pid" 2>/dev/null; then
    kill -TERM "$py_pid" 2>/dev/null || true
    wait "$py_pid" 2>/dev/null || true
  fi
  # Whatever the driver could not stop: its servers (it records their pids) and SeaweedFS.
  if [[ -f $WORK/pids ]]; then
    while read -r pid; do
      [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null || true
    done <"$WORK/pids"
  fi
  for d in "$WORK"/run-*/weed; do
    [[ -d $d ]] && bash "$ROOT/scripts/seaweedfs.sh" stop "$d" || true
  done
  rm -rf "$WORK"
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

FERRY_BENCH_BIN="$WORK/ferry" FERRY_BENCH_AWS="$VENV/bin/aws" FERRY_BENCH_WORK="$WORK" \
  "$VENV/bin/python" scripts/bench/s3.py "$@" &
py_pid=$!
wait "$py_pid"
