#!/usr/bin/env bash
# Load benchmark (not a test): 1,000 concurrent 1 MiB uploads, 100 concurrent 100 MiB uploads
# and HEAD throughput, ferry serve beside @tus/server and rustus. Writes docs/reliability.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup-test-deps.sh
command -v ab >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq apache2-utils >/dev/null
}
cargo build --release -p ferry
exec tests/interop/.venv/bin/python scripts/bench/load.py "$@"
