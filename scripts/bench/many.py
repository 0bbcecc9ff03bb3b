"""Memory at many uploads at once: N uploads of 1 MiB, every one in flight at once (`ferry
upload DIR --files-at-once N`, one connection each), into a fresh server each run. Records
the server's peak resident set (VmHWM), the wall time and whether every upload finished.
Contenders: ferry serve --sync none, ferry serve --sync always, @tus/server, rustus; runs
alternate. Results go to docs/benchmarks.md (section "many").

    scripts/bench-many.sh

Environment: FERRY_MANY (default 1000), FERRY_MANY_RUNS (default 3)."""

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (FERRY, conditions, idle, machine, publish, start_ferry,  # noqa: E402
                    start_rustus, start_tus_node, summarize, vm_hwm_kib)

N = int(os.environ.get("FERRY_MANY", "1000"))
RUNS = int(os.environ.get("FERRY_MANY_RUNS", "3"))


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    work = Path(tempfile.mkdtemp(prefix="ferry-many-"))
    tree = work / "files"
    tree.mkdir()
    for i in range(N):
        (tree / f"f{i:05}.bin").write_bytes(os.urandom(1 << 20))
    contenders = [
        ("ferry serve --sync none", lambda p, w: start_ferry(p, w, "ferry", "--sync", "none")),
        ("ferry serve --sync always", lambda p, w: start_ferry(p, w, "ferry")),
        ("@tus/server", lambda p, w: start_tus_node(p, w)),
        ("rustus", lambda p, w: start_rustus(p, w, "rustus")),
    ]
    results = {name: [] for name, _ in contenders}
    try:
        for r in range(RUNS):
            k = r % len(contenders)
            for name, start in contenders[k:] + contenders[:k]:
                run_dir = work / "run"
                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir.mkdir()
                procs = []
                started = start(procs, run_dir)
                if not started:
                    print(f"{name}: not installed, skipped")
                    continue
                endpoint, _ = started
                pid = procs[0].p.pid
                try:
                    idle()
                    extra = ("--max-chunk", "32M") if name == "rustus" else ()
                    t0 = time.perf_counter()
                    out = subprocess.run(
                        [str(FERRY), "upload", str(tree), endpoint, "--state-dir",
                         str(run_dir / "state"), "--json", "--files-at-once", str(N),
                         "--retries", "0", *extra],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                    dt = time.perf_counter() - t0
                    done = sum(1 for line in out.stdout.decode().splitlines()
                               if json.loads(line).get("event") == "file_done")
                    rss = vm_hwm_kib(pid) / 1024
                finally:
                    for p in procs:
                        p.stop()
                results[name].append((rss, dt, done, out.returncode))
                print(f"run {r + 1}/{RUNS}  {name}: {rss:.0f} MiB peak, {dt:.1f} s, "
                      f"{done}/{N} done, exit {out.returncode}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"{N} uploads of 1 MiB at once (`ferry upload DIR --files-at-once {N} --retries 0`, one "
        f"connection each), loopback, a fresh server per run, {RUNS} alternating runs, "
        f"{conditions()}; {machine()}; {time.strftime('%Y-%m-%d')}.",
        "",
        "| server | peak RSS (VmHWM), median | min–max | wall time, median | finished |",
        "|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        if not runs:
            continue
        rss = summarize([x[0] for x in runs])
        dt = summarize([x[1] for x in runs])
        done = min(x[2] for x in runs)
        lines.append(f"| {name} | {rss[0]:.0f} MiB | {rss[1]:.0f}–{rss[2]:.0f} | "
                     f"{dt[0]:.1f} s | {done}/{N} in every run |")
    publish("many", "Memory at 1,000 uploads at once", "scripts/bench-many.sh", "\n".join(lines))


if __name__ == "__main__":
    main()
