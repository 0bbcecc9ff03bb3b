#!/usr/bin/env python3
"""Server CPU of abusive and large concatenations: five finals listing one part 700 times,
one final of 700 distinct parts, a 3-range GET of it. Usage: concat-cost.py FERRY_BINARY"""
import http.client, os, subprocess, sys, tempfile, time
ferry = sys.argv[1]
d = tempfile.mkdtemp(dir="/dev/shm")
p = subprocess.Popen([ferry, "serve", "--listen", "127.0.0.1:0", "--data-dir", d, "--sync", "none", "--log", "warn"],
                     stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
line = p.stdout.readline()
addr = line.split()[-1].replace("http://", "").split("/")[0]
host, port = addr.rsplit(":", 1)
def cpu():
    f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def req(method, path, headers=None, body=b""):
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    h = {"Tus-Resumable": "1.0.0"}; h.update(headers or {})
    c.request(method, path, body=body, headers=h)
    r = c.getresponse(); data = r.read(); c.close()
    return r.status, r.getheader("Location"), data
def partial(data):
    s, loc, _ = req("POST", "/files/", {"Upload-Length": str(len(data)), "Upload-Concat": "partial"})
    path = "/files/" + loc.rsplit("/", 1)[1]
    s, _, _ = req("PATCH", path, {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}, data)
    assert s == 204, s
    return path
pa = partial(b"abc")
c0, t0 = cpu(), time.time()
for _ in range(5):
    s, _, body = req("POST", "/files/", {"Upload-Concat": "final;" + " ".join([pa] * 700)})
    assert s == 400, (s, body)
print(f"5 finals listing one part 700 times: {s} {body.decode().strip()!r}; server CPU {cpu()-c0:.3f} s, wall {time.time()-t0:.3f} s")
parts = [partial(bytes([i % 256]) * 100) for i in range(700)]
c0, t0 = cpu(), time.time()
s, loc, body = req("POST", "/files/", {"Upload-Concat": "final;" + " ".join(parts)})
assert s == 201, (s, body)
print(f"one final of 700 distinct parts: 201; server CPU {cpu()-c0:.3f} s, wall {time.time()-t0:.3f} s")
fin = "/files/" + loc.rsplit("/", 1)[1]
c0, t0 = cpu(), time.time()
s, _, body = req("GET", fin, {"Range": "bytes=0-9,50000-50009,99990-99999"})
print(f"GET of it with 3 ranges: {s}, {len(body)} bytes; server CPU {cpu()-c0:.3f} s, wall {time.time()-t0:.3f} s")
p.kill(); p.wait(10)
subprocess.run(["rm", "-rf", d])
