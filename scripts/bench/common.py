"""Shared helpers for ferry's benchmark scripts: starting servers on loopback, timing runs,
medians with min-max. Benchmarks, not tests: they print and record figures, they assert
nothing about speed."""

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INTEROP = ROOT / "tests" / "interop"
FERRY = ROOT / "target" / "release" / "ferry"
PY = INTEROP / ".venv" / "bin" / "python"
RUSTUS = INTEROP / ".rustus" / "bin" / "rustus"
IDLE = float(os.environ.get("FERRY_BENCH_IDLE", "3"))
WARM_MIB = int(os.environ.get("FERRY_BENCH_WARM_MIB", "1536"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Proc:
    """A background server, killed on exit."""

    def __init__(self, argv, port, cwd=None, env=None):
        self.p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.port = port
        wait_port(port)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def make_file(path, size):
    if path.exists() and path.stat().st_size == size:
        return
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n


def timed(argv, **kw):
    """Runs a command; returns wall seconds. Raises on failure."""
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return dt, r.stdout.decode()


def summarize(samples):
    """median, min, max of a list of numbers."""
    return statistics.median(samples), min(samples), max(samples)


def idle():
    """Before each timed run: IDLE seconds of quiet, then recently freed page cache."""
    time.sleep(IDLE)
    warm_page_cache()


def warm_page_cache():
    """Writes and deletes a scratch file of WARM_MIB MiB.

    On this VM, memory that has not held data for a while is handed back to the host, and a
    run that writes into it (every server here writes its upload into the page cache) pays a
    host fault per page: against one long-lived `ferry serve`, a 1 GiB upload went at 776-888
    MB/s when the upload before it had just been deleted and at 269-484 MB/s otherwise; the
    scratch file brought the latter case back to 798-833. Which case a contender got depended
    on what the contender before it freed. With the scratch file every run starts with the same
    recently freed memory, as on a machine that does not hand memory back."""
    if WARM_MIB <= 0:
        return
    fd, path = tempfile.mkstemp(prefix="ferry-bench-warm-")
    try:
        block = bytes(1 << 20)
        for _ in range(WARM_MIB):
            os.write(fd, block)
    finally:
        os.close(fd)
        os.unlink(path)


def conditions():
    """How each timed run was prepared, for the report line."""
    warm = f" and a {WARM_MIB} MiB scratch file written and deleted" if WARM_MIB > 0 else ""
    return f"{IDLE:g} s idle{warm} before each"


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}"


def write_section(doc, marker, text, title="Benchmarks"):
    """Replaces the block between <!-- marker:begin --> and <!-- marker:end --> in doc."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    body = doc.read_text() if doc.exists() else f"# {title}\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in body and end in body:
        pre = body.split(begin)[0]
        post = body.split(end, 1)[1]
        body = pre + block + post
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    doc.write_text(body)


def alternate(contenders, runs, score, unit):
    """Runs every contender `runs` times, alternating, idle before each; `score` turns a run's
    result (seconds) into the figure recorded. Returns name -> list of figures.

    Each round starts one contender further along (round r runs contenders r, r+1, ...): what
    a run leaves behind (dirty pages, freed memory the VM is about to hand back, files being
    discarded) then falls on a different contender each round instead of always on the same
    successor."""
    results = {name: [] for name, _ in contenders}
    for r in range(runs):
        k = r % len(contenders)
        for name, run in contenders[k:] + contenders[:k]:
            idle()
            v = score(run())
            results[name].append(v)
            print(f"run {r + 1}/{runs}  {name}: {v:.0f} {unit}", flush=True)
    return results


def publish(marker, title, command, text):
    """Prints a result table and records it in docs/benchmarks.md under `marker`."""
    print(text)
    write_section(ROOT / "docs" / "benchmarks.md", marker,
                  f"## {title}\n\nCommand: `{command}`\n\n" + text)


def start_ferry(procs, work, name, *flags):
    """`ferry serve` on a free port with its own data dir; returns (endpoint, data dir)."""
    port = free_port()
    d = work / name
    procs.append(Proc([str(FERRY), "serve", "--listen", f"127.0.0.1:{port}",
                       "--data-dir", str(d), "--log", "warn", *flags], port))
    return f"http://127.0.0.1:{port}/files/", d


def start_tus_node(procs, work, name="tus-node"):
    """@tus/server with @tus/file-store; returns (endpoint, data dir)."""
    port = free_port()
    d = work / name
    d.mkdir()
    procs.append(Proc(["node", str(INTEROP / "tus_node_server.mjs"), "--port", str(port),
                       "--dir", str(d)], port))
    return f"http://127.0.0.1:{port}/files/", d


def start_rustus(procs, work, name, *extra):
    """rustus (64 MiB body limit, as its docs suggest for large files); returns (endpoint,
    data dir), or None when it is not installed."""
    if not RUSTUS.exists():
        return None
    port = free_port()
    d = work / name
    d.mkdir()
    procs.append(Proc([str(RUSTUS), "--host", "127.0.0.1", "--port", str(port),
                       "--data-dir", str(d), "--max-body-size", str(64 << 20),
                       "--url", "/files", *extra], port, cwd=str(d)))
    return f"http://127.0.0.1:{port}/files/", d


def vm_hwm_kib(pid):
    """Peak resident set size of a process (VmHWM), KiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
