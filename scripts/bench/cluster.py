"""Cluster benchmark (issue 23): aggregate throughput of 1, 2 and 3 `ferry serve` instances
sharing one PostgreSQL (`--meta`) and one SeaweedFS (`--store s3://…`), with 8 concurrent
`ferry upload`s of 256 MiB each (client i sends to instance i mod n, as an L4 balancer
would), and the CPU seconds each component spent: the instances, PostgreSQL, SeaweedFS and
the clients.

Alternating rounds, medians with min-max. A fresh SeaweedFS (one node) per run, one
throwaway PostgreSQL cluster for the whole run with a fresh schema per run. Writes the section
"Cluster: 1, 2 and 3 instances" of docs/benchmarks.md.

    scripts/bench-cluster.sh

Environment: FERRY_BENCH_RUNS (default 3), FERRY_BENCH_MIB (default 256 per upload),
FERRY_BENCH_CLIENTS (default 8), FERRY_BENCH_DOC=0 to leave the docs alone."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (ROOT, conditions, free_port, idle, machine, make_file,  # noqa: E402
                    summarize, wait_port, write_section)

RUNS = int(os.environ.get("FERRY_BENCH_RUNS", "3"))
MIB = int(os.environ.get("FERRY_BENCH_MIB", "256"))
CLIENTS = int(os.environ.get("FERRY_BENCH_CLIENTS", "8"))
BIN = Path(os.environ["FERRY_BENCH_BIN"])
PG = os.environ["FERRY_BENCH_PG"]
PG_DIR = Path(os.environ["FERRY_BENCH_PG_DIR"])
SEAWEED = ROOT / "scripts" / "seaweedfs.sh"
CREDS = {"AWS_ACCESS_KEY_ID": "ferry", "AWS_SECRET_ACCESS_KEY": "ferry-secret"}
CLK = os.sysconf("SC_CLK_TCK")


def stat(pid):
    """(own CPU s, waited-for children's CPU s) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    v = s[s.rindex(")") + 2:].split()
    return (int(v[11]) + int(v[12])) / CLK, (int(v[13]) + int(v[14])) / CLK


def children(pid):
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree_cpu(pid):
    """CPU seconds of a process, its live descendants and the children it reaped."""
    total, seen = 0.0, [pid]
    while seen:
        p = seen.pop()
        try:
            own, reaped = stat(p)
        except OSError:
            continue
        total += own + reaped
        seen += children(p)
    return total


def psql(sql):
    subprocess.run(["psql", PG, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True,
                   stdout=subprocess.DEVNULL)


def fresh_meta(tag):
    name = f"bench_cluster_{os.getpid()}_{tag}"
    psql(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in PG else "?"
    return f"{PG}{sep}options=-csearch_path%3D{name}"


class Weed:
    def __init__(self, d):
        self.dir = d
        env = dict(os.environ, **CREDS)
        r = subprocess.run(["bash", str(SEAWEED), "start", str(d)], capture_output=True,
                           text=True, env=env, timeout=120, check=True)
        self.url = r.stdout.strip().splitlines()[-1]
        subprocess.run(["bash", str(SEAWEED), "bucket", str(d), "bench"], check=True,
                       env=env, timeout=60, stdout=subprocess.DEVNULL)
        self.pid = int((d / "weed.pid").read_text())

    def stop(self):
        subprocess.run(["bash", str(SEAWEED), "stop", str(self.dir)], timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def run(work, n, src, tag):
    """n instances, CLIENTS uploads; returns (MB/s, {component: CPU s})."""
    weed = Weed(work / f"weed-{tag}")
    meta = fresh_meta(tag)
    servers = []
    try:
        for i in range(n):
            port = free_port()
            argv = [str(BIN), "serve", "--listen", f"127.0.0.1:{port}",
                    "--data-dir", str(work / f"node-{tag}-{i}"), "--meta", meta,
                    "--store", f"s3://bench/{tag}", "--s3-endpoint", weed.url,
                    "--instance-id", f"node-{i}", "--log", "warn"]
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=open(work / f"node-{tag}-{i}.log", "w"),
                                 env=dict(os.environ, **CREDS))
            servers.append((p, port))
        for _, port in servers:
            wait_port(port)
        idle()
        pg_pid = int((PG_DIR / "data" / "postmaster.pid").read_text().split()[0])
        before = {"ferry serve": sum(tree_cpu(p.pid) for p, _ in servers),
                  "PostgreSQL": tree_cpu(pg_pid), "SeaweedFS": tree_cpu(weed.pid)}
        t0 = time.perf_counter()
        clients = []
        for c in range(CLIENTS):
            _, port = servers[c % n]
            state = work / f"state-{tag}-{c}"
            clients.append(subprocess.Popen(
                [str(BIN), "upload", str(src), f"http://127.0.0.1:{port}/files/",
                 "--state-dir", str(state), "-j", "1", "--retries", "0", "--quiet"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        client_cpu = 0.0
        for p in clients:
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            if p.returncode != 0:
                raise RuntimeError(f"ferry upload failed: {p.stderr.read().decode()[-500:]}")
            client_cpu += usage.ru_utime + usage.ru_stime
        dt = time.perf_counter() - t0
        cpu = {"ferry serve": sum(tree_cpu(p.pid) for p, _ in servers),
               "PostgreSQL": tree_cpu(pg_pid), "SeaweedFS": tree_cpu(weed.pid)}
        cpu = {k: cpu[k] - before[k] for k in cpu}
        cpu["clients"] = client_cpu
        return CLIENTS * (MIB << 20) / dt / 1e6, cpu
    finally:
        for p, _ in servers:
            p.stdin.close()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        weed.stop()
        for d in work.glob(f"node-{tag}-*"):
            shutil.rmtree(d, ignore_errors=True) if d.is_dir() else None
        for d in work.glob(f"state-{tag}-*"):
            shutil.rmtree(d, ignore_errors=True)


def main():
    work = Path(os.environ.get("FERRY_BENCH_WORK") or tempfile.mkdtemp(prefix="ferry-bench-cl-"))
    src = work / "src.bin"
    make_file(src, MIB << 20)
    sizes = [1, 2, 3]
    res = {n: {"rate": [], "cpu": []} for n in sizes}
    for r in range(RUNS):
        k = r % len(sizes)
        for n in sizes[k:] + sizes[:k]:
            rate, cpu = run(work, n, src, f"r{r}n{n}")
            res[n]["rate"].append(rate)
            res[n]["cpu"].append(cpu)
            print(f"round {r + 1}/{RUNS}  {n} instance(s): {rate:.0f} MB/s, CPU s "
                  + ", ".join(f"{c} {v:.1f}" for c, v in cpu.items()), flush=True)
    fmt = lambda xs, f="{:.0f}": "{} ({}–{})".format(*(f.format(x) for x in summarize(xs)))
    total_gib = CLIENTS * MIB / 1024
    lines = [
        f"{CLIENTS} concurrent `ferry upload`s of {MIB} MiB each ({total_gib:g} GiB in all; "
        f"client i sends to instance i mod n), `ferry serve` instances sharing PostgreSQL 15 "
        f"(a throwaway cluster on loopback) and a one-node SeaweedFS (a fresh one per run), "
        f"everything on this one machine; medians of {RUNS} rounds in alternating order "
        f"(min–max), {conditions()}; {machine()}; {time.strftime('%Y-%m-%d')}.",
        "",
        "| instances | aggregate MB/s | × 1 instance | CPU s per GiB: ferry serve (all) | "
        "PostgreSQL | SeaweedFS | clients |",
        "|---|---|---|---|---|---|---|",
    ]
    one = summarize(res[1]["rate"])[0]
    for n in sizes:
        per = lambda c: [x[c] / total_gib for x in res[n]["cpu"]]
        lines.append(f"| {n} | {fmt(res[n]['rate'])} | {summarize(res[n]['rate'])[0] / one:.2f} "
                     f"| {fmt(per('ferry serve'), '{:.2f}')} | {fmt(per('PostgreSQL'), '{:.2f}')} "
                     f"| {fmt(per('SeaweedFS'), '{:.2f}')} | {fmt(per('clients'), '{:.2f}')} |")
    text = "\n".join(lines)
    print(text)
    if os.environ.get("FERRY_BENCH_DOC", "1") != "0":
        write_section(ROOT / "docs" / "benchmarks.md", "cluster",
                      "## Cluster: 1, 2 and 3 instances\n\nCommand: `scripts/bench-cluster.sh`"
                      "\n\n" + text)


if __name__ == "__main__":
    main()
