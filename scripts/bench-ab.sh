#!/usr/bin/env bash
# A/B of two ferry binaries (not a test): alternating 1 GiB uploads on loopback, each against a
# fresh `ferry serve --sync none` of the same binary, 2 s idle and then a 1536 MiB scratch file
# written and deleted just before each (this VM hands memory idle for ~2 s back to the host, and
# writing into it costs a host fault per page: see docs/benchmarks.md). Prints MB/s and the CPU
# seconds of client and server per run, which say more than wall time on this noisy VM.
#   scripts/bench-ab.sh BIN_A BIN_B [ROUNDS] [-- extra `ferry upload` flags]
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 BIN_A BIN_B [ROUNDS] [-- upload flags]" >&2; exit 2; }
a=$1 b=$2; shift 2
rounds=5
if [[ $# -gt 0 && $1 != "--" ]]; then rounds=$1; shift; fi
[[ ${1:-} == "--" ]] && shift
work=$(mktemp -d -t ferry-ab.XXXXXX)
server=""
cleanup() { [[ -n $server ]] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
src=$work/src.bin
head -c $((1 << 30)) /dev/urandom > "$src"

one() {
    local bin=$1; shift
    rm -rf "$work/data" "$work/state"; mkdir -p "$work/data" "$work/state"
    local port=$((20000 + RANDOM % 20000))
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" --sync none --log warn \
        >"$work/server.log" 2>&1 &
    server=$!
    for _ in $(seq 50); do curl -s -o /dev/null -X OPTIONS "http://127.0.0.1:$port/files/" && break; sleep 0.1; done
    sleep 2
    dd if=/dev/zero of="$work/scratch" bs=1M count=1536 status=none
    rm "$work/scratch"
    local s0 s1 t0 t1 cu cs
    s0=$(awk '{print $14 + $15}' "/proc/$server/stat")
    t0=$(date +%s.%N)
    /usr/bin/time -f "%U %S" -o "$work/ctime" "$bin" upload --state-dir "$work/state" "$@" \
        "$src" "http://127.0.0.1:$port/files/" >/dev/null 2>"$work/client.log" \
        || { echo "upload failed:"; cat "$work/client.log"; exit 1; }
    t1=$(date +%s.%N)
    s1=$(awk '{print $14 + $15}' "/proc/$server/stat")
    read -r cu cs < "$work/ctime"
    kill "$server"; wait "$server" 2>/dev/null || true; server=""
    python3 -c "dt = $t1 - $t0; print(f'{(1 << 30) / dt / 1e6:6.0f} MB/s  client cpu {$cu + $cs:.2f} s  server cpu {($s1 - $s0) / 100:.2f} s')"
}

for r in $(seq "$rounds"); do
    echo -n "round $r  A "; one "$a" "$@"
    echo -n "round $r  B "; one "$b" "$@"
done
