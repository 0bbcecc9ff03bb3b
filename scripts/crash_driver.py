#!/usr/bin/env python3
"""Crash harness driver for ferry (see docs/reliability.md).

Runs concurrent uploads (raw tus PATCH, raw IETF draft interop 8, `ferry upload`) and ranged
downloads against `ferry serve` built with the `crash-sim` feature, kills the server at random
instants (alternately a plain SIGKILL and a simulated power loss, SIGUSR2 with FERRY_CRASH_SIM=1,
which cuts every file back to what was fsynced), restarts it on the same port and data dir,
and SIGKILLs `ferry upload` clients and re-runs them.

Checks (each failure is a "violation"):
- after every server death, every acknowledged offset is still backed by the data file
  (file length >= the highest Upload-Offset a client saw in a 204/201);
- after every restart, HEAD of every upload shows an offset >= every acknowledged offset;
- no upload is lost (HEAD 404/410 of an upload we created);
- a GET answered 200 carries the whole upload byte-exact (nothing partial served as complete);
  ranged GETs of finished uploads are byte-exact;
- every upload started completes, byte-exact.

Cluster mode (--instances N, --meta postgres://..., an S3 --store): N servers share the
records and the store; every request goes through a balancer in this driver that sends it to a
random instance (so clients switch instances all the time, `ferry upload` too); one instance
at a time is SIGKILLed and restarted, others are paused (SIGSTOP, then SIGCONT after up to
twice the lease ttl, so their uploads are taken over by others). `ferry fsck` runs at the end.

Prints one JSON summary line on stdout; exit 0 when there was no violation (or, with
--expect-violation, when there was one), 1 otherwise, 2 on a harness error.
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TUS = {"Tus-Resumable": "1.0.0"}
IETF = {"Upload-Draft-Interop-Version": "8"}
TIMEOUT = 15
KEEP_FINISHED = 40


class Harness:
    def __init__(self, a):
        self.a = a
        self.rng = random.Random(a.seed)
        self.lock = threading.Lock()
        self.acked = {}  # upload id -> highest acknowledged offset
        self.finished = {}  # upload id -> bytes (complete, verified)
        self.inflight = {}  # upload id -> bytes (being uploaded)
        self.ietf = set()  # ids of uploads created over the IETF draft
        self.chunk_acks = {}  # chunk session id -> [(start, end)] acknowledged (end exclusive)
        self.prefix = {}  # upload id -> URL prefix when not /files/ (chunk sessions)
        self.violations = []
        self.local = threading.local()  # which kind of uploader a thread is
        self.stats = dict(
            server_kills=0, sigkills=0, power_losses=0, client_kills=0,
            uploads_completed=0, bytes_uploaded=0, ranged_gets=0, acks=0,
            cut_bytes=0, removed_files=0, cli_runs=0, cut_bodies=0, deleted=0, pauses=0,
            instances=a.instances,
        )
        self.stop = threading.Event()
        self.server_up = threading.Event()
        self.proc = None
        self.port = 0
        self.workdir = a.workdir
        self.data_dir = os.path.join(a.workdir, "data")
        self.log_path = os.path.join(a.workdir, "server.log")
        self.client_kill_budget = a.client_kills
        self.cli_procs = set()
        # Cluster mode: one entry per instance (process, port, data dir); requests go through
        # the balancer's port.
        self.nodes = []
        self.balancer = None

    # ---------- bookkeeping ----------
    def violation(self, msg):
        with self.lock:
            if len(self.violations) < 200:
                self.violations.append(msg)
        print("VIOLATION: " + msg, file=sys.stderr, flush=True)

    def ack(self, uid, offset):
        with self.lock:
            self.stats["acks"] += 1
            if offset > self.acked.get(uid, -1):
                self.acked[uid] = offset

    def bump(self, key, n=1):
        with self.lock:
            self.stats[key] += n

    # ---------- server ----------
    def start_server(self):
        if self.a.instances > 1:
            return self.start_cluster()
        self.proc, self.port = self.spawn(self.port, self.data_dir, [])
        self.server_up.set()

    def spawn(self, port, data_dir, extra):
        """A server on `port` (0: any free one); returns (process, port)."""
        env = dict(os.environ, FERRY_CRASH_SIM="1")
        for _ in range(100):
            log = open(self.log_path, "ab")
            p = subprocess.Popen(
                [self.a.ferry, "serve", "--listen", f"127.0.0.1:{port}",
                 "--data-dir", data_dir, "--sync", self.a.sync,
                 "--exit-on-stdin-close", "--log", "warn", "--body-idle-timeout", "5s"]
                + self.store_args() + extra,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
            )
            log.close()
            line = p.stdout.readline().decode()
            if line.startswith("ferry listening on "):
                url = urllib.parse.urlparse(line.split()[-1])
                return p, url.port
            p.wait()
            time.sleep(0.1)  # the port may not be free yet
        raise RuntimeError("server does not start; see " + self.log_path)

    # ---------- cluster ----------
    def start_cluster(self):
        """Starts every instance and the balancer (once); `self.port` is the balancer's."""
        for i in range(self.a.instances):
            d = os.path.join(self.a.workdir, f"data-{i}")
            os.makedirs(d, exist_ok=True)
            extra = ["--meta", self.a.meta, "--instance-id", f"node-{i}",
                     "--lease-ttl", f"{self.a.lease_ttl}s", "--lease-margin", "1s"]
            p, port = self.spawn(0, d, extra)
            self.nodes.append(dict(proc=p, port=port, dir=d, extra=extra, paused=False))
        self.balancer = ThreadingHTTPServer(("127.0.0.1", 0), balancer_handler(self))
        self.balancer.daemon_threads = True
        threading.Thread(target=self.balancer.serve_forever, daemon=True).start()
        self.port = self.balancer.server_address[1]
        self.proc = self.nodes[0]["proc"]
        self.server_up.set()

    def kill_instance(self, i):
        """SIGKILLs instance `i` and starts it again on its port (the others keep serving)."""
        n = self.nodes[i]
        with self.lock:
            n["down"] = True
        n["proc"].kill()
        n["proc"].wait()
        n["proc"].stdin.close()
        n["proc"].stdout.close()
        self.bump("server_kills")
        self.bump("sigkills")
        p, _ = self.spawn(n["port"], n["dir"], n["extra"])
        with self.lock:
            n["proc"] = p
            n["down"] = False

    def pauser(self):
        """Pauses one instance at a time (SIGSTOP, then SIGCONT within 2 ttl), `--pauses` times
        in all, while the killer runs."""
        rng = random.Random(self.a.seed * 31)
        done = 0
        while done < self.a.pauses and not self.stop.is_set():
            time.sleep(rng.uniform(self.a.min_interval, self.a.max_interval))
            i = rng.randrange(len(self.nodes))
            with self.lock:
                n = self.nodes[i]
                if n.get("down") or n["paused"]:
                    continue
                n["paused"] = True
                p = n["proc"]
            p.send_signal(signal.SIGSTOP)
            time.sleep(rng.uniform(0.2, 2 * self.a.lease_ttl))
            p.send_signal(signal.SIGCONT)
            with self.lock:
                n["paused"] = False
            done += 1
            self.bump("pauses")

    def acked_now(self):
        """Every acknowledged offset (a chunk session's: the end of its last range)."""
        with self.lock:
            acked = dict(self.acked)
            for uid, ranges in self.chunk_acks.items():
                if ranges:
                    acked.setdefault(uid, max(e for _, e in ranges))
        return acked

    def check_acked(self, acked=None):
        """After a kill and restart: every acknowledged offset is still there (HEAD shows at
        least it), no upload is lost, every acknowledged range of a session still received."""
        if acked is None:
            acked = self.acked_now()
        for uid in list(acked):
            if uid in self.prefix:
                acked.pop(uid)
                self.check_chunk_ranges(uid)
        for uid, off in acked.items():
            got = self.head(uid, tus=uid not in self.ietf)
            with self.lock:
                deleted = uid not in self.acked
            if got is None or deleted:
                continue
            if got == "gone":
                self.violation(f"upload {uid} lost after restart (acknowledged {off})")
            elif got < off:
                self.violation(f"upload {uid}: HEAD offset {got} < acknowledged {off}")

    def store_args(self):
        """`--store` and `--s3-endpoint` for an S3 store (credentials: AWS_* variables)."""
        if not self.a.store:
            return []
        return ["--store", self.a.store, "--s3-endpoint", self.a.s3_endpoint]

    def kill_server(self, power_loss):
        self.server_up.clear()
        p = self.proc
        before = self.power_loss_lines()
        # stdin stays open until the process is dead: closing it first would start a graceful
        # shutdown (--exit-on-stdin-close) racing with the kill.
        if power_loss:
            p.send_signal(signal.SIGUSR2)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.violation("power-loss crash did not end the server within 20s")
                p.kill()
                p.wait()
        else:
            p.kill()
            p.wait()
        p.stdin.close()
        p.stdout.close()
        if power_loss and self.power_loss_lines() != before + 1:
            self.violation("a power-loss kill ended the server without the simulated crash")
        self.bump("server_kills")
        self.bump("power_losses" if power_loss else "sigkills")
        # The data as a restart (after a power loss) finds it must back every acknowledgement
        # (a chunk session's file must reach at least the end of every acknowledged range).
        acked = self.acked_now()
        # (An S3 store's bytes are checked through the restarted server's HEADs below.)
        for uid, off in ({} if self.a.store else acked).items():
            path = os.path.join(self.data_dir, "uploads", uid[:2], uid)
            try:
                size = os.path.getsize(path)
            except OSError:
                size = -1
            with self.lock:
                deleted = uid not in self.acked  # by the driver, to bound disk use
            if size < off and not deleted:
                self.violation(
                    f"after {'power loss' if power_loss else 'SIGKILL'}: upload {uid} "
                    f"acknowledged {off} bytes but its data file has "
                    f"{'none' if size < 0 else size}")
        self.start_server()
        self.check_acked(acked)

    def power_loss_lines(self):
        with open(self.log_path, errors="replace") as f:
            return sum(1 for line in f if line.startswith("crash-sim: power loss: cut "))

    # ---------- HTTP ----------
    def request(self, method, path, headers=None, body=None, cut=None):
        """One request on a fresh connection; None when the server is unreachable."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            if cut is not None:
                # A client dying mid-body: announce everything, send a part, hang up.
                conn.putrequest(method, path)
                for k, v in (headers or {}).items():
                    conn.putheader(k, v)
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders()
                conn.send(body[:cut])
                return None
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def head(self, uid, tus):
        """Committed offset, "gone", or None if unreachable."""
        h = dict(TUS) if tus else dict(IETF)
        for _ in range(3):
            r = self.request("HEAD", f"/files/{uid}", h)
            if r is None:
                time.sleep(0.2)
                continue
            if r[0] in (404, 410):
                return "gone"
            if r[0] in (200, 204) and "upload-offset" in r[1]:
                return int(r[1]["upload-offset"])
            return None
        return None

    def wait_up(self):
        while not self.server_up.wait(0.2):
            pass

    # ---------- uploaders ----------
    def create(self, path, headers, what, deadline):
        """POSTs until the server (restarting under the killer) answers 201; returns the new
        upload's id, or None after recording a violation."""
        while True:
            if time.time() > deadline:
                self.violation(f"{what} never succeeded")
                return None
            self.wait_up()
            r = self.request("POST", path, headers, b"")
            if r is not None and r[0] == 201:
                return r[1]["location"].rstrip("/").rsplit("/", 1)[-1]
            if r is not None and r[0] != 503:
                self.violation(f"{what} answered {r[0]}: {r[2][:200]!r}")
                return None
            time.sleep(0.1)

    def raw_upload(self, rng, ietf):
        size = rng.randint(1, self.a.max_size)
        data = rng.randbytes(size)
        proto = IETF if ietf else TUS
        deadline = time.time() + self.a.upload_timeout
        h = dict(proto, **{"Upload-Length": str(size), "Content-Length": "0"})
        if ietf:
            h["Upload-Complete"] = "?0"
        uid = self.create("/files/", h, "creation", deadline)
        if uid is None:
            return
        with self.lock:
            self.inflight[uid] = data
            if ietf:
                self.ietf.add(uid)
        failures = 0
        while True:
            if time.time() > deadline:
                self.violation(f"upload {uid} did not complete in {self.a.upload_timeout}s")
                return
            self.wait_up()
            off = self.head(uid, tus=not ietf)
            if off is None:
                time.sleep(0.1)
                continue
            if off == "gone":
                self.violation(f"upload {uid} lost (404/410 on HEAD)")
                return
            with self.lock:
                acked = self.acked.get(uid, 0)
            if off < acked:
                self.violation(f"upload {uid}: HEAD offset {off} < acknowledged {acked}")
                return
            if off == size:
                break
            n = min(size - off, rng.randint(16 * 1024, self.a.max_chunk))
            last = off + n == size
            h = dict(proto, **{"Upload-Offset": str(off)})
            if ietf:
                h["Content-Type"] = "application/partial-upload"
                h["Upload-Complete"] = "?1" if last else "?0"
            else:
                h["Content-Type"] = "application/offset+octet-stream"
            body = data[off:off + n]
            if rng.random() < 0.1:
                self.bump("cut_bodies")
                self.request("PATCH", f"/files/{uid}", h, body, cut=rng.randint(0, n))
                continue
            r = self.request("PATCH", f"/files/{uid}", h, body)
            if r is None or r[0] in (409, 423, 503):
                time.sleep(0.05)
                continue
            if r[0] != 204:
                failures += 1
                if failures >= 5:
                    self.violation(f"upload {uid}: PATCH answered {r[0]}: {r[2][:200]!r}")
                    return
                time.sleep(0.2)
                continue
            got = int(r[1]["upload-offset"])
            if got != off + n:
                self.violation(f"upload {uid}: 204 with offset {got}, expected {off + n}")
            self.ack(uid, got)
        self.verify_complete(uid, data)

    def chunk_status(self, uid, size):
        """Received ranges [(start, end exclusive)] of a chunk session, "gone", or None."""
        r = self.request("PUT", f"/chunks/{uid}", {"Content-Range": f"bytes */{size}"}, b"")
        if r is None:
            return None
        if r[0] in (404, 410):
            return "gone"
        if r[0] != 200:
            return None
        out = []
        for part in r[1].get("upload-ranges", "").split(","):
            if part.strip():
                a, b = part.strip().split("-")
                out.append((int(a), int(b) + 1))
        return out

    def check_chunk_ranges(self, uid, got=None):
        """Every acknowledged range of a session must still be received. Returns the ranges."""
        with self.lock:
            acks = list(self.chunk_acks.get(uid, []))
            size = len(self.inflight.get(uid, b"")) or None
        if size is None:
            return None
        if got is None:
            got = self.chunk_status(uid, size)
        if got is None:
            return None
        if got == "gone":
            with self.lock:
                deleted = uid not in self.chunk_acks
            if not deleted:
                self.violation(f"chunk session {uid} lost (404/410)")
            return "gone"
        for a, e in acks:
            if not any(ra <= a and e <= rb for ra, rb in got):
                self.violation(f"chunk session {uid}: acknowledged {a}-{e - 1} is not received "
                               f"any more ({got})")
        return got

    def chunk_upload(self, rng):
        """A Content-Range chunk session: chunks of random sizes, in random order, some cut off."""
        size = rng.randint(1, self.a.max_size)
        data = rng.randbytes(size)
        deadline = time.time() + self.a.upload_timeout
        uid = self.create("/chunks/", {"Upload-Length": str(size)}, "chunk session creation",
                          deadline)
        if uid is None:
            return
        with self.lock:
            self.inflight[uid] = data
            self.chunk_acks[uid] = []
            self.prefix[uid] = "/chunks/"
        while True:
            if time.time() > deadline:
                self.violation(f"chunk session {uid} did not complete in {self.a.upload_timeout}s")
                return
            self.wait_up()
            got = self.check_chunk_ranges(uid)
            if got is None:
                time.sleep(0.1)
                continue
            if got == "gone":
                return
            gaps, at = [], 0
            for a, e in got:
                if a > at:
                    gaps.append((at, a))
                at = max(at, e)
            if at < size:
                gaps.append((at, size))
            if not gaps:
                break
            ga, ge = rng.choice(gaps)
            n = min(ge - ga, rng.randint(16 * 1024, self.a.max_chunk))
            start = rng.randint(ga, ge - n)
            h = {"Content-Range": f"bytes {start}-{start + n - 1}/{size}"}
            body = data[start:start + n]
            if rng.random() < 0.1:
                self.bump("cut_bodies")
                self.request("PUT", f"/chunks/{uid}", h, body, cut=rng.randint(0, n))
                continue
            r = self.request("PUT", f"/chunks/{uid}", h, body)
            if r is None or r[0] in (408, 503):
                time.sleep(0.05)
                continue
            if r[0] != 200:
                self.violation(f"chunk session {uid}: PUT answered {r[0]}: {r[2][:200]!r}")
                return
            with self.lock:
                self.stats["acks"] += 1
                self.chunk_acks[uid].append((start, start + n))
        self.verify_complete(uid, data)

    def cli_upload(self, rng, idx):
        size = rng.randint(1, self.a.max_size)
        data = rng.randbytes(size)
        path = os.path.join(self.workdir, f"cli-{idx}.bin")
        with open(path, "wb") as f:
            f.write(data)
        state = os.path.join(self.workdir, f"state-{idx}")
        cmd = [self.a.ferry, "upload", "--json", "-j", "1", "--state-dir", state,
               "--retries", "10000", "--retry-time", "10m", "--stall-timeout", "5s",
               "--connect-timeout", "2s", "--chunk-size", "256K", "--max-chunk", "2M",
               path, f"http://127.0.0.1:{self.port}/files/"]
        deadline = time.time() + self.a.upload_timeout
        while True:
            if time.time() > deadline:
                self.violation(f"ferry upload of {size} bytes did not complete (see {path}.err)")
                return
            self.wait_up()
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            with self.lock:
                self.cli_procs.add(p)
            self.bump("cli_runs")
            killer = None
            with self.lock:
                kill_it = self.client_kill_budget > 0 and rng.random() < 0.6
                if kill_it:
                    self.client_kill_budget -= 1
            if kill_it:
                killer = threading.Timer(rng.uniform(0.05, self.a.client_kill_within), self.kill_client, (p,))
                killer.start()
            out, err = p.communicate()
            if killer is not None:
                killer.cancel()
            with open(path + ".err", "ab") as log:
                log.write(b"--- run ended %d\n" % p.returncode + err)
            with self.lock:
                self.cli_procs.discard(p)
                if killer is not None and not getattr(p, "killed", False):
                    self.client_kill_budget += 1  # it ended before its kill: another run

            if p.returncode == -signal.SIGKILL:
                continue
            if p.returncode != 0:
                # Retries exhausted while the server was down: run the same command again.
                time.sleep(0.2)
                continue
            break
        os.remove(path)
        os.remove(path + ".err")
        url = next(e["url"] for e in map(json.loads, out.decode().splitlines())
                   if e.get("event") == "file_done")
        uid = url.rstrip("/").rsplit("/", 1)[-1]
        self.verify_complete(uid, data)

    def kill_client(self, p):
        if p.poll() is None:
            p.kill()
            p.killed = True
            self.bump("client_kills")

    def verify_complete(self, uid, data):
        for _ in range(200):
            self.wait_up()
            r = self.request("GET", f"{self.prefix.get(uid, '/files/')}{uid}")
            if r is None:
                time.sleep(0.1)
                continue
            if r[0] != 200 or r[2] != data:
                self.violation(
                    f"upload {uid} complete but GET answered {r[0]} with "
                    f"{len(r[2])} bytes (sha256 {hashlib.sha256(r[2]).hexdigest()[:12]}), "
                    f"expected {len(data)}")
                return
            with self.lock:
                self.inflight.pop(uid, None)
                self.finished[uid] = data
                self.stats["uploads_completed"] += 1
                kind = f"completed_{getattr(self.local, 'kind', 'other')}"
                self.stats[kind] = self.stats.get(kind, 0) + 1
                self.stats["bytes_uploaded"] += len(data)
                # Keep disk and memory bounded on long runs: the oldest finished uploads go.
                old = list(self.finished)[:-KEEP_FINISHED]
                for o in old:
                    del self.finished[o]
                    self.acked.pop(o, None)
                    self.chunk_acks.pop(o, None)
                self.chunk_acks.pop(uid, None)  # complete: checked by GET from now on
            for o in old:
                if o in self.prefix:
                    continue  # sessions have no DELETE; they expire like any upload
                if self.request("DELETE", f"/files/{o}", dict(TUS)) is not None:
                    self.bump("deleted")
            return
        self.violation(f"upload {uid}: server unreachable for verification")

    def uploader(self, idx):
        rng = random.Random(self.a.seed * 1000 + idx)
        kind = idx % 4
        self.local.kind = ("tus", "ietf", "ferry_upload", "chunks")[kind]
        n = 0
        while not self.stop.is_set():
            try:
                if kind == 0:
                    self.raw_upload(rng, ietf=False)
                elif kind == 1:
                    self.raw_upload(rng, ietf=True)
                elif kind == 3:
                    self.chunk_upload(rng)
                else:
                    self.cli_upload(rng, f"{idx}-{n}")
            except Exception as e:  # a harness bug must not look like a pass
                self.violation(f"uploader {idx} crashed: {e!r}")
                return
            n += 1

    # ---------- downloaders ----------
    def downloader(self, idx):
        rng = random.Random(self.a.seed * 7919 + idx)
        while not self.stop.is_set():
            time.sleep(0.02)
            with self.lock:
                done = list(self.finished.items())
                going = list(self.inflight.items())
            if going and rng.random() < 0.5:
                uid, data = rng.choice(going)
                r = self.request("GET", f"{self.prefix.get(uid, '/files/')}{uid}")
                if r is not None and r[0] == 200 and r[2] != data:
                    self.violation(f"unfinished upload {uid} served as 200 "
                                   f"({len(r[2])} of {len(data)} bytes)")
                continue
            if not done:
                continue
            uid, data = rng.choice(done)
            a = rng.randrange(len(data))
            b = rng.randrange(a, len(data))
            r = self.request("GET", f"{self.prefix.get(uid, '/files/')}{uid}",
                             {"Range": f"bytes={a}-{b}"})
            if r is None:
                continue
            with self.lock:
                deleted = uid not in self.finished
            if deleted and r[0] in (404, 410):
                continue
            if r[0] != 206 or r[2] != data[a:b + 1]:
                self.violation(f"GET {uid} bytes={a}-{b}: {r[0]}, {len(r[2])} bytes, "
                               f"{'exact' if r[2] == data[a:b + 1] else 'WRONG'}")
            else:
                self.bump("ranged_gets")

    # ---------- run ----------
    def run(self):
        os.makedirs(self.data_dir, exist_ok=True)
        self.start_server()
        threads = [threading.Thread(target=self.uploader, args=(i,), daemon=True)
                   for i in range(self.a.uploaders)]
        threads += [threading.Thread(target=self.downloader, args=(i,), daemon=True)
                    for i in range(self.a.downloaders)]
        for t in threads:
            t.start()
        kinds = self.a.kinds.split(",")
        t0 = time.time()
        if self.nodes:
            pauser = threading.Thread(target=self.pauser, daemon=True)
            pauser.start()
            threads.append(pauser)
        for k in range(self.a.server_kills):
            time.sleep(self.rng.uniform(self.a.min_interval, self.a.max_interval))
            if self.nodes:
                with self.lock:
                    live = [i for i, n in enumerate(self.nodes) if not n["paused"]]
                self.kill_instance(self.rng.choice(live or [0]))
                self.check_acked()
            else:
                self.kill_server(power_loss=kinds[k % len(kinds)] == "powerloss")
            if self.a.expect_violation and self.violations:
                break
            if time.time() - t0 > self.a.budget:
                break
        # Let the client kills catch up, then let every upload in progress finish.
        # (Count the kills that happened, not the budget: a kill scheduled on a run that then
        # ends by itself gives its budget back, after this loop could have seen it at 0.)
        while (self.stats["client_kills"] < self.a.client_kills
               and time.time() - t0 < self.a.budget and not self.a.expect_violation):
            time.sleep(0.2)
        self.stop.set()
        for t in threads:
            t.join(timeout=self.a.upload_timeout + 30)
            if t.is_alive():
                self.violation("a worker did not finish")
        for p in [n["proc"] for n in self.nodes] or [self.proc]:
            p.send_signal(signal.SIGCONT)
            p.stdin.close()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.balancer is not None:
            self.balancer.shutdown()
        if self.nodes and self.a.sync == "always":
            # A cluster keeps leftovers (data of a creation or deletion a kill cut in half)
            # until they are older than --reconcile-grace: another instance may be writing.
            # With every instance stopped, one started with a short grace removes them at
            # startup, as the reconciler does after the grace (1 h by default).
            n = self.nodes[0]
            time.sleep(1.5)
            p, _ = self.spawn(0, n["dir"], n["extra"] + ["--reconcile-grace", "1s"])
            p.stdin.close()
            p.wait(timeout=60)
        if self.a.sync == "always":
            # Records and data must agree after every kill (orphaned data is cleaned at start).
            cluster = ["--meta", self.a.meta] if self.nodes else []
            data_dir = self.nodes[0]["dir"] if self.nodes else self.data_dir
            fsck = subprocess.run([self.a.ferry, "fsck", "--data-dir", data_dir]
                                  + self.store_args() + cluster,
                                  capture_output=True, text=True, timeout=120)
            self.stats["fsck"] = fsck.stdout.strip().splitlines()[-1:] or [fsck.stderr.strip()]
            if fsck.returncode != 0:
                self.violation(f"ferry fsck: exit {fsck.returncode}: {fsck.stdout.strip()} "
                               f"{fsck.stderr.strip()}")
        with open(self.log_path, errors="replace") as f:
            for line in f:
                if line.startswith("crash-sim: power loss: cut "):
                    w = line.split()
                    self.bump("cut_bytes", int(w[4]))
                    self.bump("removed_files", int(w[8]))
        self.stats["seconds"] = round(time.time() - t0, 1)
        self.stats["sync"] = self.a.sync
        self.stats["violations"] = len(self.violations)
        self.stats["first_violations"] = self.violations[:5]
        print(json.dumps(self.stats), flush=True)
        failed = bool(self.violations)
        return 0 if failed == self.a.expect_violation else 1


HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection",
       "expect"}


def balancer_handler(h):
    """A per-request balancer: each request goes to a random instance that takes the
    connection (a killed one is skipped); bodies (chunked ones too) stream through, and one cut
    short by the client is cut short to the instance too."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def handle(self):
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away (killed, or cut its body on purpose)

        def forward(self):
            self.forward_once()

        def forward_once(self):
            length = int(self.headers.get("Content-Length") or 0)
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            order = list(range(len(h.nodes)))
            random.shuffle(order)
            for i in order:
                conn = http.client.HTTPConnection("127.0.0.1", h.nodes[i]["port"], timeout=60)
                try:
                    conn.connect()
                except OSError:
                    conn.close()
                    continue
                try:
                    conn.putrequest(self.command, self.path, skip_host=True,
                                    skip_accept_encoding=True)
                    for k, v in self.headers.items():
                        if k.lower() not in HOP:
                            conn.putheader(k, v)
                    if chunked:
                        conn.putheader("Transfer-Encoding", "chunked")
                    conn.endheaders()
                    whole = self.relay_chunked(conn) if chunked else self.relay(conn, length)
                    if not whole:
                        return self.close_now()  # the client went away mid-body
                    r = conn.getresponse()
                    data = r.read()
                except (OSError, http.client.HTTPException):
                    return self.close_now()  # the instance died with the request on it
                finally:
                    conn.close()
                self.send_response_only(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                if self.command != "HEAD" or r.getheader("Content-Length") is None:
                    self.send_header("Content-Length", str(len(data)))
                else:
                    self.send_header("Content-Length", r.getheader("Content-Length"))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                return
            self.send_response_only(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def relay(self, conn, length):
            """Streams a body of `length` bytes; False when the client cut it short."""
            while length:
                piece = self.rfile.read1(min(length, 1 << 16))
                if not piece:
                    return False
                conn.send(piece)
                length -= len(piece)
            return True

        def relay_chunked(self, conn):
            """Streams a chunked body as it comes, trailers included (a checksum may be in
            them); False when the client cut it short."""
            while True:
                line = self.rfile.readline(1024)
                if not line.endswith(b"\n"):
                    return False
                conn.send(line)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        t = self.rfile.readline(8192)
                        if not t.endswith(b"\n"):
                            return False
                        conn.send(t)
                        if t in (b"\r\n", b"\n"):
                            return True
                left = size + 2  # the data and its CRLF
                while left:
                    piece = self.rfile.read1(min(left, 1 << 16))
                    if not piece:
                        return False
                    conn.send(piece)
                    left -= len(piece)

        def close_now(self):
            self.close_connection = True

        do_GET = do_HEAD = do_POST = do_PATCH = do_PUT = do_DELETE = do_OPTIONS = forward

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ferry", required=True, help="ferry binary built with crash-sim")
    p.add_argument("--workdir", required=True)
    p.add_argument("--sync", default="always", choices=["always", "none"])
    p.add_argument("--kinds", default="powerloss,sigkill",
                   help="server kill kinds, used in turn: powerloss,sigkill")
    p.add_argument("--store", help="s3://BUCKET/PREFIX: the server keeps its data in S3 "
                   "(power losses do not apply: use --kinds sigkill)")
    p.add_argument("--s3-endpoint", help="the S3 endpoint for --store")
    p.add_argument("--instances", type=int, default=1,
                   help="cluster mode: this many servers sharing --meta and --store")
    p.add_argument("--meta", help="postgres://... for cluster mode")
    p.add_argument("--pauses", type=int, default=0,
                   help="cluster mode: instances paused (SIGSTOP/SIGCONT) this many times")
    p.add_argument("--lease-ttl", type=int, default=4, help="cluster mode: --lease-ttl seconds")
    p.add_argument("--server-kills", type=int, default=8)
    p.add_argument("--client-kills", type=int, default=4)
    p.add_argument("--client-kill-within", type=float, default=1.5,
                   help="a client kill lands 0.05 s to this many seconds into a run")
    p.add_argument("--uploaders", type=int, default=8)
    p.add_argument("--downloaders", type=int, default=2)
    p.add_argument("--max-size", type=int, default=3 << 20)
    p.add_argument("--max-chunk", type=int, default=1 << 20)
    p.add_argument("--min-interval", type=float, default=0.3)
    p.add_argument("--max-interval", type=float, default=1.5)
    p.add_argument("--budget", type=float, default=80, help="seconds of killing at most")
    p.add_argument("--upload-timeout", type=float, default=120)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--expect-violation", action="store_true",
                   help="succeed only if a violation is found (proves the harness can fail)")
    a = p.parse_args()
    if a.instances > 1 and not (a.meta and a.store):
        p.error("--instances needs --meta and --store")
    print(f"crash driver: seed {a.seed}", file=sys.stderr, flush=True)

    def interrupted(signum, _frame):
        raise SystemExit(128 + signum)  # runs the cleanup below

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    h = Harness(a)
    try:
        code = h.run()
    except Exception as e:
        print(f"harness error: {e!r}", file=sys.stderr)
        code = 2
    finally:
        with h.lock:
            procs = list(h.cli_procs) + ([h.proc] if h.proc is not None else [])
            procs += [n["proc"] for n in h.nodes]
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    sys.exit(code)


if __name__ == "__main__":
    main()
