"""Download benchmark: `ferry download` against aria2c (-x1/-x4/-x8), curl and wget, each
fetching the same file from nginx and from `ferry serve --share`, on loopback, alternating,
medians of N runs with min-max; then ferry serve's peak RSS while it serves 16 parallel
ranged streams of the file.

    scripts/bench-download.sh          # what to run (installs, builds, then calls this)

Environment: FERRY_BENCH_RUNS (default 5), FERRY_BENCH_SIZE (bytes, default 1 GiB),
FERRY_BENCH_IDLE (seconds before each run, default 3), FERRY_BENCH_WARM_MIB (MiB of
scratch file written and deleted before each run, default 1536; 0 for none), FERRY_BENCH_ONLY (comma-separated
substrings: run only the contenders whose name contains one; the docs are then left alone).
Benchmarks, not tests: nothing here asserts a speed."""

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (FERRY, ROOT, Proc, conditions, free_port, idle, machine, make_file,  # noqa: E402
                    summarize, timed, vm_hwm_kib, write_section)

RUNS = int(os.environ.get("FERRY_BENCH_RUNS", "5"))
SIZE = int(os.environ.get("FERRY_BENCH_SIZE", str(1 << 30)))
ONLY = [s for s in os.environ.get("FERRY_BENCH_ONLY", "").split(",") if s]
STREAMS = 16


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(8 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def nginx_conf(ng, root, port):
    # Two workers (one per core), sendfile: nginx as it is usually deployed. `user root` keeps
    # the workers able to read the private temp dir when the benchmark runs as root (ignored
    # otherwise).
    (ng / "tmp").mkdir(parents=True, exist_ok=True)
    (ng / "nginx.conf").write_text(f"""
user root root;
worker_processes 2;
pid {ng}/nginx.pid;
error_log {ng}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {ng}/tmp/body;
  proxy_temp_path {ng}/tmp/proxy;
  fastcgi_temp_path {ng}/tmp/fastcgi;
  uwsgi_temp_path {ng}/tmp/uwsgi;
  scgi_temp_path {ng}/tmp/scgi;
  sendfile on;
  server {{
    listen 127.0.0.1:{port};
    root {root};
  }}
}}
""")


def parallel_ranged_streams(port, path, size, streams):
    """`streams` connections, each fetching its own slice with Range; everyone pauses after
    the first MiB so the server has to hold back, then reads to the end. Returns bytes read."""
    slice_ = size // streams
    barrier = threading.Barrier(streams)
    got = [0] * streams

    def one(i):
        a = i * slice_
        b = size - 1 if i == streams - 1 else (i + 1) * slice_ - 1
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        barrier.wait()
        c.request("GET", path, headers={"Range": f"bytes={a}-{b}"})
        r = c.getresponse()
        assert r.status == 206, r.status
        paused = False
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            got[i] += len(chunk)
            if not paused:
                paused = True
                time.sleep(1.0)
        c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(got)


def main():
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-dl-"))
    share = work / "share"
    share.mkdir()
    src = share / "big.bin"
    make_file(src, SIZE)
    # An hour old, as a published file is: its Last-Modified is a strong validator.
    old = time.time() - 3600
    os.utime(src, (old, old))
    want = sha256_file(src)
    out = work / "out"
    out.mkdir()
    state = work / "state"
    procs = []
    try:
        # Servers -------------------------------------------------------------------------
        ng_port = free_port()
        ng = work / "nginx"
        nginx_conf(ng, share, ng_port)
        procs.append(Proc(["nginx", "-p", str(ng), "-c", str(ng / "nginx.conf"), "-e",
                           str(ng / "error.log"), "-g", "daemon off;"], ng_port))
        fy_port = free_port()
        ferry_srv = Proc([str(FERRY), "serve", "--listen", f"127.0.0.1:{fy_port}",
                          "--data-dir", str(work / "data"), "--share", str(share),
                          "--log", "warn"], fy_port)
        procs.append(ferry_srv)
        sources = {
            "nginx": f"http://127.0.0.1:{ng_port}/big.bin",
            "ferry serve --share": f"http://127.0.0.1:{fy_port}/share/big.bin",
        }

        # Contenders ----------------------------------------------------------------------
        dest = out / "big.bin"

        def ferry_dl(*flags):
            return lambda url: timed([str(FERRY), "download", "--state-dir", str(state),
                                      "-o", str(dest), *flags, url])[0]

        def aria2c(n):
            return lambda url: timed(["aria2c", "-q", f"-x{n}", f"-s{n}", "-k1M",
                                      "--file-allocation=falloc", "--allow-overwrite=true",
                                      "--auto-file-renaming=false", "-d", str(out),
                                      "-o", dest.name, url])[0]

        tools = [
            ("ferry download", ferry_dl()),
            ("ferry download -j 4", ferry_dl("-j", "4")),
            ("aria2c -x1", aria2c(1)),
            ("aria2c -x4", aria2c(4)),
            ("aria2c -x8", aria2c(8)),
            ("curl", lambda url: timed(["curl", "-sS", "-f", "-o", str(dest), url])[0]),
            ("wget", lambda url: timed(["wget", "-q", "-O", str(dest), url])[0]),
        ]
        contenders = [(f"{tool} ← {src_name}", run, url)
                      for src_name, url in sources.items() for tool, run in tools]
        if ONLY:
            contenders = [c for c in contenders if any(o in c[0] for o in ONLY)]

        results = {name: [] for name, _, _ in contenders}
        for r in range(RUNS):
            for name, run, url in contenders:
                if dest.exists():
                    dest.unlink()
                idle()
                dt = run(url)
                if dest.stat().st_size != SIZE:
                    raise RuntimeError(f"{name}: {dest.stat().st_size} bytes")
                if r == 0 and sha256_file(dest) != want:
                    raise RuntimeError(f"{name}: wrong content")
                results[name].append(SIZE / dt / 1e6)
                print(f"run {r + 1}/{RUNS}  {name}: {SIZE / dt / 1e6:.0f} MB/s", flush=True)
        if dest.exists():
            dest.unlink()

        # Server memory: 16 parallel ranged streams of the file ----------------------------
        idle()
        base = vm_hwm_kib(ferry_srv.p.pid)
        t0 = time.perf_counter()
        got = parallel_ranged_streams(fy_port, "/share/big.bin", SIZE, STREAMS)
        dt = time.perf_counter() - t0
        peak = vm_hwm_kib(ferry_srv.p.pid)
        if got != SIZE:
            raise RuntimeError(f"ranged streams read {got} of {SIZE} bytes")
        rss = (f"ferry serve peak RSS (VmHWM) serving {STREAMS} parallel ranged streams of the "
               f"{SIZE / (1 << 30):.2f} GiB file (each reader pausing 1 s after its first MiB): "
               f"{peak / 1024:.1f} MiB (at start: {base / 1024:.1f} MiB); "
               f"{SIZE / dt / 1e6:.0f} MB/s in all.")
        print(rss, flush=True)

        # Report --------------------------------------------------------------------------
        med = {n: summarize(v) for n, v in results.items()}
        lines = [
            f"Download, {SIZE / (1 << 30):.2f} GiB random file, loopback, medians of {RUNS} "
            f"alternating runs, {conditions()}; "
            f"{machine()}; {time.strftime('%Y-%m-%d')}.",
            "",
            "| contender ← server | median MB/s | min–max | × curl (same server) "
            "| × aria2c -x8 (same server) |",
            "|---|---|---|---|---|",
        ]
        for name, _, _ in contenders:
            m, lo, hi = med[name]
            srv = name.split(" ← ", 1)[1]
            curl = med.get(f"curl ← {srv}", (None,))[0]
            aria = med.get(f"aria2c -x8 ← {srv}", (None,))[0]
            rel = lambda b: f"{m / b:.2f}" if b else "–"  # noqa: E731
            lines.append(f"| {name} | {m:.0f} | {lo:.0f}–{hi:.0f} | {rel(curl)} | {rel(aria)} |")
        lines += [
            "",
            rss,
            "",
            "Timed: the client command's wall time, start to exit, output file deleted between "
            "runs. `ferry download` (default `-j auto`) preallocates the file, writes a partial "
            "file, saves its resume state every quarter second after an fdatasync, fdatasyncs "
            "the whole file before renaming it into place: all inside the timed run; curl, "
            "wget and aria2c leave their data in the page cache. aria2c runs with "
            "`-xN -sN -k1M --file-allocation=falloc`. nginx: 2 workers, sendfile on.",
        ]
        text = "\n".join(lines)
        print(text)
        if not ONLY:
            write_section(ROOT / "docs" / "benchmarks.md", "download", "## Downloads\n\n"
                          "Command: `scripts/bench-download.sh`\n\n" + text)
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
