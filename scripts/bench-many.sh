#!/usr/bin/env bash
# Memory benchmark (not a test): 1,000 concurrent 1 MiB uploads, server peak RSS, ferry serve
# (both sync modes) beside @tus/server and rustus. Writes docs/benchmarks.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup-test-deps.sh
cargo build --release -p ferry
exec tests/interop/.venv/bin/python scripts/bench/many.py "$@"
