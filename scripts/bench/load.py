"""Load benchmark: ferry serve beside @tus/server and rustus on loopback.

1. 1,000 concurrent uploads of 1 MiB (1,000 distinct files, `ferry upload DIR
   --files-at-once 1000`: every file in flight at once, one connection each).
2. 100 concurrent uploads of 100 MiB (hard links of one file, `--files-at-once 100`, one
   stream per file).
3. HEAD on one finished upload: requests per second and latency percentiles with ApacheBench
   (`ab -k -i`, HEAD with keep-alive; stock wrk 4.1 stalls on HEAD), 64 connections.

For each server: errors, wall time, every stored upload byte-exact (the data directory's files
of the upload size hashed and compared, as a multiset, with the sources), server peak RSS
(VmHWM). The same client drives every server. Results go to docs/reliability.md.

    scripts/bench-load.sh

Environment: FERRY_LOAD_SMALL (default 1000), FERRY_LOAD_LARGE (default 100),
FERRY_LOAD_LARGE_MIB (default 100), FERRY_LOAD_HEADS (default 50000)."""

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (FERRY, ROOT, machine, start_ferry, start_rustus, start_tus_node,  # noqa: E402
                    vm_hwm_kib, write_section)

SMALL = int(os.environ.get("FERRY_LOAD_SMALL", "1000"))
LARGE = int(os.environ.get("FERRY_LOAD_LARGE", "100"))
LARGE_MIB = int(os.environ.get("FERRY_LOAD_LARGE_MIB", "100"))
HEADS = int(os.environ.get("FERRY_LOAD_HEADS", "50000"))


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def stored_hashes(data_dir, size):
    """Hashes of every regular file of exactly `size` bytes below a server's data dir."""
    out = Counter()
    for p in Path(data_dir).rglob("*"):
        if p.is_file() and p.stat().st_size == size:
            out[sha256_of(p)] += 1
    return out


def wipe(data_dir):
    """Empties a server's data dir between rounds (keeps ferry's database and lock)."""
    for p in Path(data_dir).rglob("*"):
        if p.is_file() and p.stat().st_size >= 1 << 20:
            p.unlink()


def upload_dir(tree, endpoint, at_once, state, extra=()):
    shutil.rmtree(state, ignore_errors=True)
    t0 = time.perf_counter()
    r = subprocess.run([str(FERRY), "upload", str(tree), endpoint, "--state-dir", str(state),
                        "--json", "--files-at-once", str(at_once), "--retries", "0", *extra],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    lines = [e for e in map(json.loads, r.stdout.decode().splitlines())
             if e.get("event") == "file_done"]
    return dt, r.returncode, lines, r.stderr.decode()


def head_load(url):
    """ab -k -i: HEAD with keep-alive. Returns (requests/s, p50 ms, p99 ms, failed)."""
    r = subprocess.run(["ab", "-q", "-k", "-i", "-c", "64", "-n", str(HEADS),
                        "-H", "Tus-Resumable: 1.0.0", url],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    out = r.stdout.decode()
    rps = p50 = p99 = None
    failed = 0
    for line in out.splitlines():
        if line.startswith("Requests per second:"):
            rps = float(line.split()[3])
        elif line.strip().startswith("50%"):
            p50 = float(line.split()[1])
        elif line.strip().startswith("99%"):
            p99 = float(line.split()[1])
        elif line.startswith("Failed requests:") or line.startswith("Non-2xx responses:"):
            failed += int(line.split()[-1])
    if rps is None:
        raise RuntimeError(f"ab failed: {out[-500:]} {r.stderr.decode()[-500:]}")
    return rps, p50, p99, failed


def main():
    # 1,000 connections each way, plus files: raise the open-file limit for us and children.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 65536))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    work = Path(tempfile.mkdtemp(prefix="ferry-load-"))
    small = work / "small"
    small.mkdir()
    small_hashes = Counter()
    for i in range(SMALL):
        data = os.urandom(1 << 20)
        (small / f"f{i:05}.bin").write_bytes(data)
        small_hashes[hashlib.sha256(data).hexdigest()] += 1
    large = work / "large"
    large.mkdir()
    src = work / "large.bin"
    with open(src, "wb") as f:
        for _ in range(LARGE_MIB):
            f.write(os.urandom(1 << 20))
    for i in range(LARGE):
        os.link(src, large / f"l{i:03}.bin")
    large_hash = sha256_of(src)
    rows = []
    try:
        for name, start in (
            ("ferry serve", lambda p: start_ferry(p, work, "ferry")),
            ("@tus/server", lambda p: start_tus_node(p, work)),
            ("rustus", lambda p: start_rustus(p, work, "rustus")),
        ):
            procs = []
            started = start(procs)
            if not started:
                print(f"{name}: not installed, skipped")
                continue
            endpoint, data = started
            pid = procs[0].p.pid
            try:
                row = {"server": name}
                # rustus refuses bodies over its limit: keep every request under it.
                extra = ("--max-chunk", "32M") if name == "rustus" else ()
                dt, code, lines, err = upload_dir(small, endpoint, SMALL, work / "st1", extra)
                stored = stored_hashes(data, 1 << 20)
                row["small"] = {
                    "seconds": dt, "exit": code, "reported": len(lines),
                    "byte_exact": stored == small_hashes,
                    "stderr": err.strip().splitlines()[-3:],
                }
                wipe(data)
                dt, code, lines, err = upload_dir(large, endpoint, LARGE, work / "st2", extra)
                stored = stored_hashes(data, LARGE_MIB << 20)
                row["large"] = {
                    "seconds": dt, "exit": code, "reported": len(lines),
                    "byte_exact": stored == Counter({large_hash: LARGE}),
                    "stderr": err.strip().splitlines()[-3:],
                }
                one = lines[0]["url"] if lines else None
                if one:
                    row["head"] = head_load(one)
                row["rss_mib"] = vm_hwm_kib(pid) / 1024
                wipe(data)
            finally:
                for p in procs:
                    p.stop()
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"Loopback, {machine()}; {time.strftime('%Y-%m-%d')}. Client: `ferry upload DIR` "
        f"(every file in flight at once, one connection each; `--retries 0`, so any error "
        f"shows). Byte-exact: the data directory's files hashed and compared with the sources. "
        f"HEAD: `ab -k -i -c 64 -n {HEADS}` on one finished upload.",
        "",
        f"| server | {SMALL} × 1 MiB at once | {LARGE} × {LARGE_MIB} MiB at once | "
        "HEAD req/s | HEAD p50 / p99 ms | server peak RSS |",
        "|---|---|---|---|---|---|",
    ]

    def cell(r):
        ok = "all byte-exact" if r["byte_exact"] else "NOT byte-exact"
        errs = "" if r["exit"] == 0 else f", exit {r['exit']}"
        return f"{r['seconds']:.1f} s, {ok}{errs}"

    for r in rows:
        h = r.get("head")
        head = f"{h[0]:.0f}" + (f" ({h[3]} failed)" if h and h[3] else "") if h else "–"
        lat = f"{h[1]:.0f} / {h[2]:.0f}" if h else "–"
        lines.append(f"| {r['server']} | {cell(r['small'])} | {cell(r['large'])} | {head} | "
                     f"{lat} | {r['rss_mib']:.0f} MiB |")
    text = "\n".join(lines)
    print(text)
    write_section(ROOT / "docs" / "reliability.md", "load",
                  "## Load\n\nCommand: `scripts/bench-load.sh`\n\n" + text, title="Reliability")


if __name__ == "__main__":
    main()
