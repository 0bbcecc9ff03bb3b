"""Metadata benchmark (issue 22): `ferry serve` with its records in the embedded redb and in
PostgreSQL (`--meta postgres://…`), side by side in one run, on the local store.

1. Round trips to PostgreSQL per request, counted by ferry itself (it logs the count at
   shutdown and at startup): a server lifetime with one POST only, one with the POST and N
   PATCHes of 64 KiB, one with the POST and N HEADs. Per PATCH = (second - first) / N, per HEAD
   = (third - first) / N; what the server does in the background (the sweeper's first pass,
   the check of unfinished uploads) cancels out.
2. HEAD requests per second on one finished upload, ApacheBench (`ab -k -i -c 16`).
3. One 512 MiB `ferry upload` (one stream, its defaults), MB/s.

Alternating rounds, medians with min-max. The PostgreSQL server is a throwaway cluster on
loopback (scripts/postgres.sh: fsync and synchronous_commit on, its defaults), a fresh schema
per server. Writes the section "Metadata: redb vs PostgreSQL" of docs/benchmarks.md.

    scripts/bench-meta.sh

Environment: FERRY_BENCH_RUNS (default 3), FERRY_BENCH_HEADS (default 20000),
FERRY_BENCH_PATCHES (default 200), FERRY_BENCH_MIB (default 512), FERRY_BENCH_DOC=0 to leave
the docs alone."""

import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (FERRY, ROOT, conditions, free_port, idle, machine, make_file,  # noqa: E402
                    summarize, vm_hwm_kib, write_section)

RUNS = int(os.environ.get("FERRY_BENCH_RUNS", "3"))
HEADS = int(os.environ.get("FERRY_BENCH_HEADS", "20000"))
PATCHES = int(os.environ.get("FERRY_BENCH_PATCHES", "200"))
MIB = int(os.environ.get("FERRY_BENCH_MIB", "512"))
BIN = Path(os.environ.get("FERRY_BENCH_BIN", str(FERRY)))
PG = os.environ["FERRY_BENCH_PG"]


def psql(sql):
    subprocess.run(["psql", PG, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True,
                   stdout=subprocess.DEVNULL)


SCHEMAS = [0]


def fresh_meta():
    SCHEMAS[0] += 1
    name = f"bench_{os.getpid()}_{SCHEMAS[0]}"
    psql(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in PG else "?"
    return f"{PG}{sep}options=-csearch_path%3D{name}"


class Server:
    """`ferry serve` on a fresh data dir; `meta` None for redb."""

    def __init__(self, work, meta):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(dir=work))
        self.err = open(self.dir / "stderr", "w+")
        argv = [str(BIN), "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir",
                str(self.dir / "data"), "--log", "info"]
        if meta:
            argv += ["--meta", meta]
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=self.err)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                http.client.HTTPConnection("127.0.0.1", self.port, timeout=1).connect()
                break
            except OSError:
                time.sleep(0.05)
        self.base = f"http://127.0.0.1:{self.port}/files/"

    def stop(self):
        """Stops it; returns (round trips after startup, peak RSS KiB)."""
        rss = vm_hwm_kib(self.p.pid)
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(20)
        self.err.seek(0)
        log = self.err.read()
        start = re.search(r"meta_round_trips=(\d+)", log)
        end = re.search(r"round trips made round_trips=(\d+)", log)
        trips = None
        if start and end:
            trips = int(end.group(1)) - int(start.group(1))
        return trips, rss


def tus(port, method, path, headers=None, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    h = {"Tus-Resumable": "1.0.0"}
    h.update(headers or {})
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    r.read()
    c.close()
    return r


def create(port, length):
    r = tus(port, "POST", "/files/", {"Upload-Length": str(length)})
    assert r.status == 201, r.status
    return r.getheader("Location")


def trips_of(work, meta, do):
    s = Server(work, meta)
    loc = create(s.port, PATCHES * 65536)
    do(s, loc)
    trips, _ = s.stop()
    return trips


def patches(s, loc):
    chunk = bytes(65536)
    for i in range(PATCHES):
        r = tus(s.port, "PATCH", loc, {"Upload-Offset": str(i * 65536),
                                       "Content-Type": "application/offset+octet-stream"},
                chunk)
        assert r.status == 204, r.status


def heads(s, loc):
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
    for _ in range(PATCHES):
        c.request("HEAD", loc, headers={"Tus-Resumable": "1.0.0"})
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
    c.close()


def round_trips(work):
    meta = fresh_meta()
    base = trips_of(work, meta, lambda s, loc: None)
    meta = fresh_meta()
    patch = trips_of(work, meta, patches)
    meta = fresh_meta()
    head = trips_of(work, meta, heads)
    return (patch - base) / PATCHES, (head - base) / PATCHES


def head_rate(work, meta):
    s = Server(work, meta)
    loc = create(s.port, 5)
    r = tus(s.port, "PATCH", loc, {"Upload-Offset": "0",
                                   "Content-Type": "application/offset+octet-stream"}, b"hello")
    assert r.status == 204
    out = subprocess.run(["ab", "-q", "-k", "-i", "-c", "16", "-n", str(HEADS),
                          "-H", "Tus-Resumable: 1.0.0", f"http://127.0.0.1:{s.port}{loc}"],
                         capture_output=True, text=True)
    s.stop()
    rate = float(re.search(r"Requests per second:\s+([\d.]+)", out.stdout).group(1))
    failed = int(re.search(r"Failed requests:\s+(\d+)", out.stdout).group(1))
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out.stdout)
    assert failed == 0 and not non2xx, out.stdout
    return rate


def upload_rate(work, meta, src):
    s = Server(work, meta)
    state = Path(tempfile.mkdtemp(dir=work))
    t0 = time.perf_counter()
    r = subprocess.run([str(BIN), "upload", str(src), s.base, "--state-dir", str(state),
                        "--retries", "0"], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    _, rss = s.stop()
    assert r.returncode == 0, r.stderr
    return (MIB << 20) / dt / 1e6, rss


def main():
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-meta-"))
    src = work / "src.bin"
    make_file(src, MIB << 20)
    contenders = [("redb (embedded)", None), ("PostgreSQL (--meta postgres://)", "pg")]
    res = {name: {"head": [], "up": [], "rss": []} for name, _ in contenders}
    trips = []
    for r in range(RUNS):
        trips.append(round_trips(work))
        print(f"round {r + 1}/{RUNS}  PostgreSQL round trips: {trips[-1][0]:.2f} per PATCH, "
              f"{trips[-1][1]:.2f} per HEAD", flush=True)
        k = r % len(contenders)
        for name, m in contenders[k:] + contenders[:k]:
            idle()
            h = head_rate(work, fresh_meta() if m else None)
            idle()
            u, rss = upload_rate(work, fresh_meta() if m else None, src)
            res[name]["head"].append(h)
            res[name]["up"].append(u)
            res[name]["rss"].append(rss / 1024)
            print(f"round {r + 1}/{RUNS}  {name}: HEAD {h:.0f}/s, upload {u:.0f} MB/s, "
                  f"server peak {rss / 1024:.1f} MiB", flush=True)
    fmt = lambda xs, f="{:.0f}": "{} ({}–{})".format(*(f.format(x) for x in summarize(xs)))
    pm = [t[0] for t in trips]
    hm = [t[1] for t in trips]
    lines = [
        f"Records in the embedded redb and in PostgreSQL 15 (a throwaway cluster on loopback, "
        f"fsync and synchronous_commit on), the local store, `--sync always`; medians of {RUNS} "
        f"rounds of alternating runs (min–max), {conditions()}; {machine()}; "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "| metadata | round trips per PATCH | per HEAD | HEAD req/s | × redb | "
        f"{MIB} MiB upload MB/s | × redb | server peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rh = summarize(res["redb (embedded)"]["head"])[0]
    ru = summarize(res["redb (embedded)"]["up"])[0]
    for name, m in contenders:
        h, u = res[name]["head"], res[name]["up"]
        rt = (fmt(pm, "{:.2f}"), fmt(hm, "{:.2f}")) if m else ("–", "–")
        lines.append(f"| {name} | {rt[0]} | {rt[1]} | {fmt(h)} | "
                     f"{summarize(h)[0] / rh:.2f} | {fmt(u)} | {summarize(u)[0] / ru:.2f} | "
                     f"{fmt(res[name]['rss'], '{:.1f}')} |")
    lines += [
        "",
        f"Round trips: counted by ferry (each exchange with PostgreSQL; pipelined statements "
        f"count once), over {PATCHES} PATCHes of 64 KiB and {PATCHES} HEADs, each less a "
        f"lifetime with only the POST. HEAD: `ab -q -k -i -c 16 -n {HEADS}` on a finished "
        f"upload. Upload: `ferry upload FILE URL` with its defaults (one stream).",
    ]
    text = "\n".join(lines)
    print(text)
    if os.environ.get("FERRY_BENCH_DOC", "1") != "0":
        write_section(ROOT / "docs" / "benchmarks.md", "meta",
                      "## Metadata: redb vs PostgreSQL\n\nCommand: `scripts/bench-meta.sh`\n\n"
                      + text)


if __name__ == "__main__":
    main()
