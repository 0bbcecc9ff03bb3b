"""The sweeper in bounded memory (not a test): N unfinished uploads with M KB of metadata each,
then several expiry sweeps (SIGUSR1); prints the server's peak RSS (VmHWM) after creating them
and after the sweeps. The report that led to the paged sweep: 8,000 uploads of 60 KB metadata
took the server to 879 MiB, 12,000 to 1.6 GB.

    python3 scripts/sweep-rss.py FERRY_BIN [N] [METADATA_KB] [EXPIRE_AFTER]

With EXPIRE_AFTER (e.g. 1s) every upload has expired by the sweeps, which delete them all.
"""

import base64
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


def vm(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024
    return 0


def main():
    ferry = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 8000
    kb = int(sys.argv[3]) if len(sys.argv) > 3 else 60
    expire = ["--expire-after", sys.argv[4]] if len(sys.argv) > 4 else []
    work = tempfile.mkdtemp(prefix="ferry-sweep-")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = subprocess.Popen(
        [ferry, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", work + "/data",
         "--sync", "none", "--max-metadata-size", f"{kb + 4}K", "--creation-rate", "0",
         "--max-unfinished-uploads", "0", "--sweep-interval", "1h", "--log", "warn", *expire],
        stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        # 60 KB of metadata: one value of 45 KB, base64-encoded.
        value = base64.b64encode(os.urandom(kb * 1024 * 3 // 4)).decode()
        meta = "filename " + base64.b64encode(value.encode()[: kb * 1024 * 3 // 4]).decode()
        conn = http.client.HTTPConnection("127.0.0.1", port)
        t0 = time.time()
        for i in range(n):
            conn.request("POST", "/files/", headers={
                "Tus-Resumable": "1.0.0", "Upload-Length": "1000", "Upload-Metadata": meta})
            r = conn.getresponse()
            r.read()
            if r.status != 201:
                raise SystemExit(f"creation {i}: {r.status}")
        created = time.time() - t0
        hwm_created = vm(server.pid, "VmHWM")
        t0 = time.time()
        for _ in range(5):
            server.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
        print(f"{n} uploads with {len(meta) // 1024} KB of metadata created in {created:.0f} s; "
              f"peak RSS after creating: {hwm_created} MiB; after 5 sweeps: "
              f"{vm(server.pid, 'VmHWM')} MiB (now {vm(server.pid, 'VmRSS')} MiB); "
              f"{sum(len(f) for _, _, f in os.walk(work + '/data/uploads'))} data files left")
    finally:
        server.terminate()
        server.wait()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
