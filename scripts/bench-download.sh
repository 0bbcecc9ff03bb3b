#!/usr/bin/env bash
# Download benchmark (not a test): ferry download vs aria2c -x1/-x4/-x8, curl and wget, from
# nginx and from ferry serve --share on loopback, plus ferry serve's peak RSS serving 16
# parallel ranged streams. Writes the table into docs/benchmarks.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup-test-deps.sh   # aria2, wget, curl, nginx-light
cargo build --release -p ferry
exec tests/interop/.venv/bin/python scripts/bench/download.py "$@"
