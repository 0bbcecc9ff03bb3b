#!/usr/bin/env bash
# Many-small-files benchmark (not a test): `ferry upload DIR` vs tus-js-client one file after
# another, against ferry serve. Writes the table into docs/benchmarks.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup-test-deps.sh
cargo build --release -p ferry
exec tests/interop/.venv/bin/python scripts/bench/small_files.py "$@"
