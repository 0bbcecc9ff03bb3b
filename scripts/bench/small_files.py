"""Many-small-files benchmark: a directory of N files of 4 KiB uploaded to ferry serve by
`ferry upload DIR` and by tus-js-client sending them one after another (one Node process,
tests/interop/tus_js_upload_many.mjs), alternating, medians of R runs with min-max. Both
against the same server, once with `--sync always` (the default) and once with `--sync none`.

    scripts/bench-small-files.sh       # what to run (installs, builds, then calls this)

Environment: FERRY_BENCH_RUNS (default 5), FERRY_BENCH_FILES (default 1000),
FERRY_BENCH_IDLE (seconds before each run, default 3), FERRY_BENCH_WARM_MIB (MiB of
scratch file written and deleted before each run, default 1536; 0 for none)."""

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (FERRY, INTEROP, Proc, alternate, conditions, free_port, machine, publish,  # noqa: E402
                    summarize, timed)

RUNS = int(os.environ.get("FERRY_BENCH_RUNS", "5"))
FILES = int(os.environ.get("FERRY_BENCH_FILES", "1000"))
SIZE = 4096


def main():
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-small-"))
    tree = work / "tree"
    for i in range(FILES):
        d = tree / f"d{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05}.bin").write_bytes(os.urandom(SIZE))
    procs = []
    try:
        servers = {}
        for sync in ("always", "none"):
            port = free_port()
            d = work / f"ferry-{sync}"
            procs.append(Proc([str(FERRY), "serve", "--listen", f"127.0.0.1:{port}",
                               "--data-dir", str(d), "--log", "warn", "--sync", sync], port))
            servers[sync] = f"http://127.0.0.1:{port}/files/"

        def ferry(sync):
            def run():
                state = work / "state"
                shutil.rmtree(state, ignore_errors=True)
                dt, out = timed([str(FERRY), "upload", str(tree), servers[sync],
                                 "--state-dir", str(state), "--json"])
                lines = [e for e in map(json.loads, out.splitlines())
                         if e.get("event") == "file_done"]
                assert len(lines) == FILES and all(x["verified"] for x in lines), out[-500:]
                return dt
            return run

        def tus_js(sync):
            def run():
                _, out = timed(["node", str(INTEROP / "tus_js_upload_many.mjs"), "--endpoint",
                                servers[sync], "--dir", str(tree)])
                last = out.strip().splitlines()[-1].split()
                assert last[0] == "files" and int(last[1]) == FILES, out[-500:]
                # The driver's own clock: the uploads only, not Node's start-up.
                return float(last[5])
            return run

        contenders = []
        for sync in ("always", "none"):
            contenders += [
                (f"ferry upload DIR → ferry serve --sync {sync}", ferry(sync)),
                (f"tus-js-client, one file after another → ferry serve --sync {sync}",
                 tus_js(sync)),
            ]
        results = alternate(contenders, RUNS, lambda dt: FILES / dt, "files/s")

        med = {n: summarize(v) for n, v in results.items()}
        lines = [
            f"{FILES} files of 4 KiB in 10 directories, loopback, medians of {RUNS} alternating "
            f"runs, {conditions()}; {machine()}; "
            f"{time.strftime('%Y-%m-%d')}.",
            "",
            "| contender | median files/s | min–max | × tus-js-client (same server) |",
            "|---|---|---|---|",
        ]
        for name, _ in contenders:
            m, lo, hi = med[name]
            sync = name.rsplit(" ", 1)[1]
            base = med[f"tus-js-client, one file after another → ferry serve --sync {sync}"][0]
            lines.append(f"| {name} | {m:.0f} | {lo:.0f}–{hi:.0f} | {m / base:.2f} |")
        lines += [
            "",
            "ferry: the whole command (start to exit), default options: up to 32 files at once, "
            "each sent in its creation request (creation-with-upload) with a CRC-32 checksum, "
            "verified against the CRC-64/NVME Repr-Digest of that response. tus-js-client: POST then "
            "PATCH per file, timed by the driver around the uploads only (Node start-up "
            "excluded).",
        ]
        publish("small-files", "Many small files", "scripts/bench-small-files.sh",
                "\n".join(lines))
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
