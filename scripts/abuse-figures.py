"""Figures for the "Bounded under load and abuse" table of docs/reliability.md (not a test: the
tests that fail without each bound are named in that table). Runs one FERRY_BIN through:

1. a creation flood: one address creating unfinished uploads in a loop for 10 s (default
   limits): how many were created, how many got 429, the server's CPU;
2. idle sockets holding every descriptor: `ferry serve` under a 256-descriptor limit, 300 idle
   connections, then `GET /healthz`: its status and time, and accept errors logged;
3. a dripping body: one byte every 2 s, `--min-body-rate 1K --body-rate-window 10s`: when and
   how it is cut;
4. an early answer to a client that sends its whole body first: Python's http.client PATCHes
   50 MiB at a wrong offset: what it reads.

    python3 scripts/abuse-figures.py FERRY_BIN
"""

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "bench"))
from common import free_port  # noqa: E402


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, ferry, *flags, wrapper=()):
        self.dir = tempfile.mkdtemp(prefix="ferry-abuse-")
        self.port = free_port()
        self.log = open(self.dir + "/log", "w")
        self.p = subprocess.Popen([*wrapper, ferry, "serve", "--listen", f"127.0.0.1:{self.port}",
                                   "--data-dir", self.dir + "/data", *flags],
                                  stdout=subprocess.DEVNULL, stderr=self.log)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.1)

    def conn(self, timeout=30):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def create(self, length):
        c = self.conn()
        c.request("POST", "/files/", headers={"Tus-Resumable": "1.0.0",
                                              "Upload-Length": str(length)})
        r = c.getresponse()
        r.read()
        loc = r.getheader("Location")  # a path unless --public-url
        return loc if loc.startswith("/") else loc.split(str(self.port), 1)[1]

    def stop(self):
        self.p.terminate()
        self.p.wait()
        self.log.close()
        text = open(self.dir + "/log").read()
        subprocess.run(["rm", "-rf", self.dir])
        return text


def flood(ferry):
    s = Server(ferry, "--sync", "none")
    c = s.conn()
    codes = {}
    c0, t0 = cpu(s.p.pid), time.time()
    while time.time() - t0 < 10:
        c.request("POST", "/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "100"})
        r = c.getresponse()
        r.read()
        codes[r.status] = codes.get(r.status, 0) + 1
    used = cpu(s.p.pid) - c0
    s.stop()
    print(f"1. creation flood, 10 s from one address: {codes.get(201, 0)} created, "
          f"{codes.get(429, 0)} answered 429 (other: "
          f"{ {k: v for k, v in codes.items() if k not in (201, 429)} }); server CPU {used:.1f} s")


def idle_sockets(ferry):
    s = Server(ferry, wrapper=("prlimit", "--nofile=256:256", "--"))
    idle = []
    for _ in range(300):
        try:
            idle.append(socket.create_connection(("127.0.0.1", s.port), 2))
        except OSError:
            break
    time.sleep(1)
    t0 = time.time()
    try:
        c = s.conn(timeout=10)
        c.request("GET", "/healthz")
        r = c.getresponse()
        status = f"{r.status} {r.read().decode().strip()!r}"
    except Exception as e:
        status = f"no answer ({type(e).__name__})"
    dt = time.time() - t0
    time.sleep(1)
    for x in idle:
        x.close()
    log = s.stop()
    print(f"2. 300 idle sockets, 256 descriptors: {len(idle)} connected; /healthz: {status} in "
          f"{dt:.2f} s; 'accept failed' logged {log.count('accept failed')} times")


def drip(ferry):
    s = Server(ferry, "--min-body-rate", "1K", "--body-rate-window", "10s")
    path = s.create(1 << 20)
    sock = socket.create_connection(("127.0.0.1", s.port))
    sock.sendall((f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                  "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                  f"Content-Length: {1 << 20}\r\n\r\n").encode())
    sock.settimeout(0.1)
    t0 = time.time()
    answer = b""
    while time.time() - t0 < 120 and not answer:
        try:
            sock.sendall(b"x")
        except OSError:
            break
        try:
            answer = sock.recv(4096)
        except socket.timeout:
            time.sleep(1.9)
    dt = time.time() - t0
    s.stop()
    line = answer.split(b"\r\n")[0].decode() if answer else "nothing"
    print(f"3. a body dripping a byte every 2 s (--min-body-rate 1K --body-rate-window 10s): "
          f"answered {line!r} after {dt:.1f} s")


def early_answer(ferry):
    s = Server(ferry, "--sync", "none")
    path = s.create(100 << 20)
    c = s.conn(timeout=60)
    t0 = time.time()
    try:
        c.request("PATCH", path, body=b"\0" * (50 << 20), headers={
            "Tus-Resumable": "1.0.0", "Upload-Offset": "7",
            "Content-Type": "application/offset+octet-stream"})
        r = c.getresponse()
        got = f"{r.status} with Upload-Offset {r.getheader('Upload-Offset')}"
    except Exception as e:
        got = f"{type(e).__name__}: {e}"
    dt = time.time() - t0
    s.stop()
    print(f"4. Python http.client, 50 MiB PATCH at a wrong offset: {got} ({dt:.2f} s)")


if __name__ == "__main__":
    ferry = sys.argv[1]
    flood(ferry)
    idle_sockets(ferry)
    drip(ferry)
    early_answer(ferry)
