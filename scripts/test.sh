#!/usr/bin/env bash
# Run ferry's whole test suite, exactly as CI does (.ci/run execs this script).
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -- FILTER...    # extra args are passed to the test runner
#
# Steps: install test deps -> fmt check -> clippy -> build bins -> tests
# (cargo-nextest, or `cargo test` when nextest is absent) -> doc tests.
# fmt/clippy failures are reported but do not stop the tests from running;
# a failing dependency setup or build stops the run. Exit status is non-zero
# if any step failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

[[ "${1:-}" == "--" ]] && shift
RUNNER_ARGS=("$@")

# cargo lives in ~/.cargo/bin on these machines; make sure it is on PATH even
# when the caller's environment did not set it up.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

# Many tests open lots of sockets/files at once.
ulimit -Sn 65536 2>/dev/null || ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

# Where the interop tests find the third-party tus clients/servers
# (see tests/interop/README.md).
export FERRY_TEST_PYTHON="$ROOT/tests/interop/.venv/bin/python"
export FERRY_TEST_NODE_DIR="$ROOT/tests/interop"
export FERRY_TEST_RUSTUS="$ROOT/tests/interop/.rustus/bin/rustus"

START=$SECONDS
SUMMARY=()
FAILED=0

# step NAME CMD... : run one step, record status and duration.
step() {
  local name="$1" t0=$SECONDS rc=0
  shift
  printf '\n==> %s: %s\n' "$name" "$*"
  "$@" || rc=$?
  local dt=$((SECONDS - t0))
  if ((rc == 0)); then
    SUMMARY+=("$(printf '  ok    %-8s %4ss' "$name" "$dt")")
  else
    SUMMARY+=("$(printf '  FAIL  %-8s %4ss  (exit %s)' "$name" "$dt" "$rc")")
    FAILED=1
  fi
  return "$rc"
}

# The services the tests use, started below and stopped on exit.
SERVICES="$(mktemp -d -t ferry-services.XXXXXX)"
# PostgreSQL's own directory (as root, scripts/postgres.sh hands it to the user postgres, who
# could not enter $SERVICES).
PGDIR="$(mktemp -d -t ferry-postgres.XXXXXX)"
# shellcheck disable=SC2317  # invoked via trap
stop_services() {
  bash scripts/seaweedfs.sh stop "$SERVICES/seaweedfs" >/dev/null 2>&1 || true
  bash scripts/postgres.sh kill "$PGDIR" >/dev/null 2>&1 || true
  rm -rf "$SERVICES" "$PGDIR"
}

# shellcheck disable=SC2317  # invoked via trap
summary() {
  printf '\n==> summary (ulimit -n %s)\n' "$(ulimit -Sn)"
  printf '%s\n' "${SUMMARY[@]}"
  local total=$((SECONDS - START))
  if ((FAILED)); then
    printf 'test.sh: FAILED after %dm%02ds\n' $((total / 60)) $((total % 60))
  else
    printf 'test.sh: all steps passed in %dm%02ds\n' $((total / 60)) $((total % 60))
  fi
}
trap 'stop_services; summary' EXIT
# A run stopped by a signal still stops its services (bash runs no EXIT trap on a signal it
# does not handle).
trap 'exit 143' TERM
trap 'exit 130' INT HUP

step setup bash scripts/setup-test-deps.sh || exit 1
# SeaweedFS (S3) for the S3 store's tests: FERRY_TEST_S3_ENDPOINT.
start_s3() {
  FERRY_TEST_S3_ENDPOINT="$(bash scripts/seaweedfs.sh start "$SERVICES/seaweedfs")" || return 1
  export FERRY_TEST_S3_ENDPOINT
  echo "S3 (SeaweedFS) at $FERRY_TEST_S3_ENDPOINT"
}
# PostgreSQL for the metadata store's tests: FERRY_TEST_POSTGRES.
start_pg() {
  FERRY_TEST_POSTGRES="$(bash scripts/postgres.sh start "$PGDIR")" || return 1
  export FERRY_TEST_POSTGRES
  echo "PostgreSQL at $FERRY_TEST_POSTGRES"
}
# Without them only the S3 or PostgreSQL tests fail (they name the missing variable); the rest
# still runs.
step services start_s3 || true
step postgres start_pg || true
step fmt cargo fmt --all --check || true
step layout bash scripts/layout.sh || true
step clippy cargo clippy --workspace --all-targets -- -D warnings || true
step build cargo build --workspace --bins || exit 1
if command -v cargo-nextest >/dev/null 2>&1; then
  step test cargo nextest run --workspace --no-fail-fast "${RUNNER_ARGS[@]}" || true
else
  echo "test.sh: cargo-nextest not found, falling back to cargo test"
  step test cargo test --workspace --no-fail-fast "${RUNNER_ARGS[@]}" || true
fi
# The protocol, download and interop suites again, each server keeping its data in S3
# (FERRY_TEST_STORE=s3: a fresh prefix per server, tests/it/support/mod.rs): the same test
# code checks both stores. Left out: tests of local files only (fdatasync order under strace),
# of ferry's client against other servers, and a server in a network namespace of its own
# (it cannot reach the store).
S3_SUITES='test(/^(append|checksum|chunks|concat|create|download|expiry|parallel|resume|terminate|upload|interop)::/)
  - test(/^interop::servers::/) - test(/_to_s3$/)
  - test(=chunks::chunk_acknowledgements_follow_data_fdatasync_and_metadata_commit)
  - test(=parallel::bad_link_auto_parallelism_reaches_best_fixed)'
if ((${#RUNNER_ARGS[@]} == 0)) && command -v cargo-nextest >/dev/null 2>&1; then
  step test-s3 env FERRY_TEST_STORE=s3 cargo nextest run -p ferry --test it --no-fail-fast \
    -E "$S3_SUITES" || true
fi
# The same suites with the records in PostgreSQL (FERRY_TEST_META=postgres: a schema of its
# own per server, tests/it/support/pg.rs), on the local store and on S3.
if ((${#RUNNER_ARGS[@]} == 0)) && command -v cargo-nextest >/dev/null 2>&1; then
  step test-pg env FERRY_TEST_META=postgres cargo nextest run -p ferry --test it --no-fail-fast \
    -E "$S3_SUITES" || true
  step test-s3-pg env FERRY_TEST_STORE=s3 FERRY_TEST_META=postgres cargo nextest run -p ferry \
    --test it --no-fail-fast -E "$S3_SUITES" || true
fi
step doctest cargo test --workspace --doc || true

exit "$FAILED"
