#!/usr/bin/env bash
# Crash harness: concurrent tus / IETF / `ferry upload` clients and ranged downloads while the
# server is killed (plain SIGKILL and simulated power loss, in turn) and restarted, and clients
# are SIGKILLed and re-run. See docs/reliability.md.
#
#   scripts/crash-harness.sh            short run (< 2 minutes): 8 server kills, 4 client kills
#   scripts/crash-harness.sh --long     >= 200 server kills (half power losses), >= 100 client kills
#   scripts/crash-harness.sh [--long] [driver options...]   e.g. --seed 7 --sync none
#   scripts/crash-harness.sh --s3 [--long] ...   the server keeps its data in S3: a SeaweedFS of
#                                     its own (scripts/seaweedfs.sh), SIGKILLs only
#   scripts/crash-harness.sh --cluster [--long] ...   three instances sharing a PostgreSQL and a
#                                     SeaweedFS of their own; clients switch instances on every
#                                     request; instances SIGKILLed (>= 100 with --long) and paused
#
# FERRY_BIN: a ferry binary built with the crash-sim feature (default: build one, in release
# mode for --long). The data and logs stay in FERRY_CRASH_DIR (default: a temp dir).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
long=0
args=()
s3=0
cluster=0
for a in "$@"; do
    case "$a" in
    --long) long=1 ;;
    --s3) s3=1 ;;
    --cluster) s3=1 cluster=1 ;;
    *) args+=("$a") ;;
    esac
done
if [[ -z "${FERRY_BIN:-}" ]]; then
    profile=()
    [[ $long == 1 ]] && profile=(--release)
    (cd "$root" && cargo build -q -p ferry --features crash-sim "${profile[@]}")
    target="${CARGO_TARGET_DIR:-$root/target}"
    FERRY_BIN="$target/$([[ $long == 1 ]] && echo release || echo debug)/ferry"
fi
keep="${FERRY_CRASH_DIR:-}"
dir="${FERRY_CRASH_DIR:-$(mktemp -d -t ferry-crash.XXXXXX)}"
echo "crash harness: data and logs in $dir" >&2
if [[ $long == 1 ]]; then
    set -- --server-kills 220 --client-kills 110 --uploaders 9 --downloaders 3 \
        --max-size $((6 << 20)) --max-chunk $((2 << 20)) --min-interval 0.2 --max-interval 1.2 \
        --budget 3000 --upload-timeout 300 --client-kill-within 0.5
else
    set -- --server-kills 8 --client-kills 4 --budget 80
fi
stop_services() {
    bash "$here/seaweedfs.sh" stop "$dir/seaweedfs" >/dev/null 2>&1 || true
    [[ $cluster == 1 ]] && bash "$here/postgres.sh" kill "$pgdir" >/dev/null 2>&1 \
        && rm -rf "$pgdir"
    return 0
}
if [[ $s3 == 1 ]]; then
    # A store of its own, stopped however the run ends; power losses cut local files only.
    trap stop_services EXIT
    # Long runs delete gigabytes: reclaimed every minute, or the 200 volumes fill up.
    endpoint="$(FERRY_SEAWEEDFS_VACUUM=60 bash "$here/seaweedfs.sh" start "$dir/seaweedfs")"
    bash "$here/seaweedfs.sh" bucket "$dir/seaweedfs" ferry-crash
    export AWS_ACCESS_KEY_ID=ferry AWS_SECRET_ACCESS_KEY=ferry-secret
    set -- "$@" --store s3://ferry-crash/run --s3-endpoint "$endpoint" --kinds sigkill
fi
if [[ $cluster == 1 ]]; then
    # The records in a PostgreSQL of the run's own, shared by three instances (a directory
    # of its own: the user postgres cannot enter the private one above).
    pgdir="$(mktemp -d -t ferry-crash-pg.XXXXXX)"
    meta="$(bash "$here/postgres.sh" start "$pgdir")"
    if [[ $long == 1 ]]; then
        set -- "$@" --server-kills 120 --pauses 40
    else
        set -- "$@" --pauses 3
    fi
    set -- "$@" --instances 3 --meta "$meta"
fi
status=0
python3 "$here/crash_driver.py" --ferry "$FERRY_BIN" --workdir "$dir" "$@" ${args[@]+"${args[@]}"} || status=$?
stop_services
# A temp dir is removed after a clean run; a failed run keeps it (server.log) for inspection.
if [[ $status == 0 && -z "$keep" ]]; then rm -rf "$dir"; fi
exit $status
