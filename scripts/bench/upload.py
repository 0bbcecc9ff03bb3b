"""Upload benchmark: ferry against the tus peers and the raw HTTP ceiling, one run on
loopback, alternating, medians of N runs with min-max.

    scripts/bench-upload.sh            # what to run (installs, builds, then calls this)

Environment: FERRY_BENCH_RUNS (default 5), FERRY_BENCH_SIZE (bytes, default 1 GiB),
FERRY_BENCH_IDLE (seconds before each run, default 3), FERRY_BENCH_WARM_MIB (MiB of
scratch file written and deleted before each run, default 1536; 0 for none), FERRY_BENCH_ONLY (substrings of contender
names, comma-separated: run only those, for quick comparisons; docs/benchmarks.md is then left
alone)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (FERRY, INTEROP, PY, Proc, alternate, conditions, free_port, machine,  # noqa: E402
                    make_file, publish, start_ferry, start_rustus, start_tus_node, summarize,
                    timed)

RUNS = int(os.environ.get("FERRY_BENCH_RUNS", "5"))
SIZE = int(os.environ.get("FERRY_BENCH_SIZE", str(1 << 30)))
CHUNK = 8 << 20


def delete(url):
    req = urllib.request.Request(url, method="DELETE", headers={"Tus-Resumable": "1.0.0"})
    try:
        urllib.request.urlopen(req, timeout=30).read()
    except Exception:
        pass


def main():
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    src = work / "src.bin"
    make_file(src, SIZE)
    procs = []
    try:
        # Servers -------------------------------------------------------------------------
        servers = {}

        servers["ferry-none"] = start_ferry(procs, work, "ferry-none", "--sync", "none")
        servers["ferry-always"] = start_ferry(procs, work, "ferry-always", "--sync", "always")
        servers["tus-node"] = start_tus_node(procs, work)
        for name, extra in (("rustus", []), ("rustus-fsync", ["--force-fsync", "true"])):
            started = start_rustus(procs, work, name, *extra)
            if started:
                servers[name] = started

        port = free_port()
        ng = work / "nginx"
        (ng / "www").mkdir(parents=True)
        (ng / "tmp").mkdir()
        # The workers must be able to write into our temp dirs (we run as root here).
        user = "user root;" if os.geteuid() == 0 else ""
        (ng / "nginx.conf").write_text(f"""
{user}
worker_processes 1;
pid {ng}/nginx.pid;
error_log {ng}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {ng}/tmp;
  server {{
    listen 127.0.0.1:{port};
    root {ng}/www;
    location / {{ dav_methods PUT; client_max_body_size 0; create_full_put_path on; }}
  }}
}}
""")
        procs.append(Proc(["nginx", "-p", str(ng), "-c", str(ng / "nginx.conf"),
                           "-g", "daemon off;"], port))
        nginx_url = f"http://127.0.0.1:{port}/up.bin"

        # Contenders ----------------------------------------------------------------------
        state = work / "state"

        def ferry_upload(server, *flags):
            def run():
                dt, out = timed([str(FERRY), "upload", str(src), servers[server][0],
                                 "--state-dir", str(state), "--json", *flags])
                delete(next(e["url"] for e in map(json.loads, out.splitlines())
                            if e.get("event") == "file_done"))
                return dt
            return run

        def node_upload(server, *flags):
            def run():
                dt, out = timed(["node", str(INTEROP / "tus_js_upload.mjs"), "--endpoint",
                                 servers[server][0], "--file", str(src), *flags])
                delete(out.strip().splitlines()[-1])
                if not server.startswith("ferry"):
                    # The DELETE above is enough for ferry; its data dir also holds the
                    # metadata database and the lock file, which must stay.
                    clean(servers[server][1])
                return dt
            return run

        def tuspy_upload(server):
            def run():
                dt, out = timed([str(PY), str(INTEROP / "tuspy_upload.py"), "--endpoint",
                                 servers[server][0], "--file", str(src), "--chunk-size", str(CHUNK)])
                delete(out.strip().splitlines()[-1])
                if not server.startswith("ferry"):
                    clean(servers[server][1])
                return dt
            return run

        def curl_put():
            dt, _ = timed(["curl", "-sS", "-f", "-T", str(src), nginx_url])
            (ng / "www" / "up.bin").unlink(missing_ok=True)
            return dt

        def dd_sync():
            out = work / "dd.bin"
            dt, _ = timed(["dd", f"if={src}", f"of={out}", "bs=8M", "conv=fdatasync", "status=none"])
            out.unlink()
            return dt

        contenders = [
            ("ferry upload → ferry serve --sync none (checksums + verified)",
             ferry_upload("ferry-none")),
            ("ferry upload --checksum none --no-verify → ferry serve --sync none",
             ferry_upload("ferry-none", "--checksum", "none", "--no-verify")),
            ("ferry upload --digest blake3 → ferry serve --sync none",
             ferry_upload("ferry-none", "--digest", "blake3")),
            ("tus-js-client → ferry serve --sync none", node_upload("ferry-none")),
            ("tus-js-client → @tus/server", node_upload("tus-node")),
            ("tuspy (8 MiB) → ferry serve --sync none", tuspy_upload("ferry-none")),
            ("tuspy (8 MiB) → @tus/server", tuspy_upload("tus-node")),
            ("curl -T → nginx WebDAV PUT (ceiling)", curl_put),
            ("ferry upload → ferry serve --sync always (checksums + verified)",
             ferry_upload("ferry-always")),
            ("dd conv=fdatasync (same size)", dd_sync),
        ]
        if "rustus" in servers:
            contenders.insert(5, ("ferry upload → rustus (64 MiB body limit)",
                                  ferry_upload("rustus", "--max-chunk", "64M")))
            contenders.append(("ferry upload → rustus --force-fsync",
                               ferry_upload("rustus-fsync", "--max-chunk", "64M")))

        only = [o for o in os.environ.get("FERRY_BENCH_ONLY", "").split(",") if o]
        if only:
            contenders = [(n, r) for n, r in contenders if any(o in n for o in only)]
        results = alternate(contenders, RUNS, lambda dt: SIZE / dt / 1e6, "MB/s")

        # Report --------------------------------------------------------------------------
        med = {n: summarize(v) for n, v in results.items()}
        if only:
            for n, (m, lo, hi) in med.items():
                print(f"{n}: median {m:.0f} MB/s ({lo:.0f}-{hi:.0f})")
            return
        base_tus = med["tus-js-client → @tus/server"][0]
        base_curl = med["curl -T → nginx WebDAV PUT (ceiling)"][0]
        lines = [
            f"Upload, {SIZE / (1 << 30):.2f} GiB random file, loopback, medians of {RUNS} "
            f"alternating runs, {conditions()}; "
            f"{machine()}; {time.strftime('%Y-%m-%d')}.",
            "",
            "| contender | median MB/s | min–max | × tus-js-client→@tus/server | × curl→nginx |",
            "|---|---|---|---|---|",
        ]
        for name, _ in contenders:
            m, lo, hi = med[name]
            lines.append(f"| {name} | {m:.0f} | {lo:.0f}–{hi:.0f} | {m / base_tus:.2f} | {m / base_curl:.2f} |")
        lines += [
            "",
            "ferry upload's default run computes a CRC-32 checksum per request (sent as an "
            "Upload-Checksum trailer and verified by the server before it commits), hashes the "
            "whole file with CRC-64/NVME while sending and compares it with the server's "
            "Repr-Digest (the server keeps the same CRC running; the response that completes the "
            "upload carries it): all of that is inside the timed run. The `--digest blake3` row "
            "compares a BLAKE3 digest instead, which ferry serve computes on request by reading "
            "the upload back. The `--checksum none --no-verify` row leaves both out. "
            "Timed: the client command's wall time, from start to exit.",
        ]
        publish("upload", "Uploads", "scripts/bench-upload.sh", "\n".join(lines))
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


def clean(d):
    for f in Path(d).glob("*"):
        if f.is_file():
            f.unlink()


if __name__ == "__main__":
    main()
