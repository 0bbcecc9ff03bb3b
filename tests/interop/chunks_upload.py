#!/usr/bin/env python3
"""Interop driver: the multi-threaded Content-Range uploader of the article
"CentOS环境下Python实现高效断点续传技术的深入解析" (requests + threading), with its two
bugs fixed, against ferry's chunk sessions (`POST /chunks/`, then `PUT` chunks).

    python chunks_upload.py --endpoint URL/chunks/ --file PATH --state PATH
        [--chunk-size BYTES] [--threads N]

What changed from the article, and why:
  * The last chunk's Content-Range was `bytes i*cs-(i+1)*cs-1/size`, past the end of the
    file; END is inclusive and must be below TOTAL (ferry answers 416 to the old form).
  * Threads saved a shared "next chunk" counter in completion order, so a crash could skip a
    chunk that never arrived. Here the state file only holds the session URL; what has
    arrived is asked from the server (`PUT` with `Content-Range: bytes */TOTAL`), which
    reports a range only after it is on disk.
  * Chunks are read from the file when sent (never the whole file in memory) and sent out of
    order (last first), several at once.

stdout: the session URL, alone, on success (exit 0).
stderr: `session <url>` once known, `resume <url> <bytes already there>` when resuming,
        `progress <bytes received by the server> <size>` after each chunk,
        `sent <n chunks>` at the end, `error: ...` on failure (exit 1).
"""

import argparse
import json
import os
import queue
import sys
import threading
from urllib.parse import urljoin

import requests

TIMEOUT = (5, 60)  # connect, read
RETRIES = 5


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def save_state(url, state_file):
    # Written whole or not at all: a kill mid-write must not leave half a URL.
    tmp = state_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(url)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_file)


def load_state(state_file):
    if os.path.exists(state_file):
        with open(state_file) as f:
            return f.read().strip() or None
    return None


def covered(received):
    return sum(b - a + 1 for a, b in received)


def chunk_done(received, start, end):
    return any(a <= start and end <= b for a, b in received)


def status(url, size):
    r = requests.put(url, data=b"", headers={"Content-Range": f"bytes */{size}"}, timeout=TIMEOUT)
    if r.status_code != 200:
        raise RuntimeError(f"status query: {r.status_code} {r.text.strip()}")
    return r.json()


def upload_chunk(session, url, path, start, end, size):
    with open(path, "rb") as f:
        f.seek(start)
        chunk = f.read(end - start + 1)
    headers = {
        "Content-Range": f"bytes {start}-{end}/{size}",
        "Content-Type": "application/octet-stream",
    }
    last = None
    for _ in range(RETRIES):
        try:
            # POST, as the article does (PUT works the same).
            r = session.post(url, data=chunk, headers=headers, timeout=TIMEOUT)
        except requests.RequestException as e:
            last = e
            continue
        if r.status_code == 200:
            return r.json()
        # 4xx other than a timeout is our fault: retrying the same bytes would not help.
        if 400 <= r.status_code < 500 and r.status_code != 408:
            raise RuntimeError(f"chunk {start}-{end}: {r.status_code} {r.text.strip()}")
        last = RuntimeError(f"chunk {start}-{end}: {r.status_code} {r.text.strip()}")
    raise RuntimeError(f"chunk {start}-{end} failed {RETRIES} times: {last}")


def upload_file_multithread(path, endpoint, state_file, chunk_size, threads):
    size = os.path.getsize(path)
    url = load_state(state_file)
    received = []
    if url:
        received = status(url, size)["received"]
        log("resume", url, covered(received))
    else:
        r = requests.post(endpoint, headers={"Upload-Length": str(size)}, timeout=TIMEOUT)
        if r.status_code != 201:
            raise RuntimeError(f"create: {r.status_code} {r.text.strip()}")
        # A path unless the server knows its public URL.
        url = urljoin(endpoint, r.headers["Location"])
        save_state(url, state_file)
    log("session", url)

    todo = queue.Queue()
    n = (size + chunk_size - 1) // chunk_size
    # Out of order on purpose: last chunk first.
    for i in reversed(range(n)):
        start = i * chunk_size
        end = min(start + chunk_size, size) - 1
        if not chunk_done(received, start, end):
            todo.put((start, end))
    sent = [0]
    errors = []
    lock = threading.Lock()

    def worker():
        session = requests.Session()
        while not errors:
            try:
                start, end = todo.get_nowait()
            except queue.Empty:
                return
            try:
                answer = upload_chunk(session, url, path, start, end, size)
            except Exception as e:  # noqa: BLE001 - reported, then the run fails
                with lock:
                    errors.append(e)
                return
            with lock:
                sent[0] += 1
                log("progress", covered(answer["received"]), size)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    log("sent", sent[0])
    final = status(url, size)
    if not final["complete"]:
        raise RuntimeError(f"server says incomplete: {json.dumps(final)}")
    return url


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--file", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--chunk-size", type=int, default=1024 * 1024)
    p.add_argument("--threads", type=int, default=4)
    a = p.parse_args()
    try:
        url = upload_file_multithread(a.file, a.endpoint, a.state, a.chunk_size, a.threads)
    except Exception as e:  # noqa: BLE001
        log("error:", e)
        sys.exit(1)
    print(url, flush=True)


if __name__ == "__main__":
    main()
