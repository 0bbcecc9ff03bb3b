#!/usr/bin/env bash
# A large file through each upload protocol (tus, the IETF draft, Content-Range chunk sessions),
# with the client killed (SIGKILL) half-way and re-run, then the server killed (SIGKILL) and
# restarted on the same port and data dir while the client goes on (it retries); checks the
# result byte-exact (sha256 of GET). Not a test (the CI-sized versions are in
# crates/cli/tests/it/upload.rs and chunks.rs); a check to run by hand on a release build.
#
#   scripts/protocol-kills.sh [SIZE]      # default 1G; needs target/release/ferry
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FERRY="${FERRY_BIN:-$ROOT/target/release/ferry}"
SIZE="${1:-1G}"
WORK="$(mktemp -d /tmp/ferry-kills.XXXXXX)"
SERVER_PID=""
cleanup() {
  [[ -n "$SERVER_PID" ]] && kill -9 "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

head -c "$SIZE" /dev/urandom >"$WORK/src.bin"
WANT="$(sha256sum "$WORK/src.bin" | cut -d' ' -f1)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"

start_server() {
  "$FERRY" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --log warn >>"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2
  exit 1
}

for proto in tus ietf chunks; do
  path=/files/
  [[ $proto == chunks ]] && path=/chunks/
  url="http://127.0.0.1:$PORT$path"
  state="$WORK/state-$proto"
  args=(upload "$WORK/src.bin" "$url" --protocol "$proto" --state-dir "$state" --json
        --limit-rate 150M --retries 1000 --retry-time 2m)
  start_server
  # 1. The client, killed half-way (about 50 % at 150 MB/s).
  half=$(python3 -c "import sys; print(max(1.0, $(stat -c %s "$WORK/src.bin") / 150e6 / 2))")
  "$FERRY" "${args[@]}" >/dev/null 2>"$WORK/client1.log" &
  cpid=$!
  sleep "$half"
  kill -9 "$cpid" 2>/dev/null || true
  wait "$cpid" 2>/dev/null || true
  # 2. Run again; kill the server a second in, restart it two seconds later.
  "$FERRY" "${args[@]}" >"$WORK/out.json" 2>"$WORK/client2.log" &
  cpid=$!
  sleep 1
  kill -9 "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  sleep 2
  start_server
  wait "$cpid"
  got_url="$(python3 -c 'import json,sys; print([e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "file_done"][-1]["url"])' "$WORK/out.json")"
  resumed="$(python3 -c 'import json,sys; print([e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "file_done"][-1]["resumed_from"])' "$WORK/out.json")"
  verified="$(python3 -c 'import json,sys; print([e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "file_done"][-1]["verified"])' "$WORK/out.json")"
  got="$(curl -sf "$got_url" | sha256sum | cut -d' ' -f1)"
  if [[ "$got" == "$WANT" ]]; then verdict="byte-exact"; else verdict="DIFFERENT"; fi
  echo "$proto: $SIZE, client killed at ~50% and re-run (resumed_from $resumed), server killed and restarted: $verdict, verified $verified"
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  [[ "$verdict" == "byte-exact" ]] || exit 1
done
