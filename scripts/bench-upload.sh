#!/usr/bin/env bash
# Upload benchmark (not a test): ferry vs tus-js-client/@tus/server, tuspy, rustus and
# curl -> nginx WebDAV PUT on loopback. Writes the table into docs/benchmarks.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup-test-deps.sh
if ! command -v nginx >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
cargo build --release -p ferry
exec tests/interop/.venv/bin/python scripts/bench/upload.py "$@"
