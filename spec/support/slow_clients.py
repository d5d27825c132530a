"""Hostile scrapers, for specs: argv[2] connections to 127.0.0.1:argv[3]; half send nothing,
half send a request byte by byte, never finishing it, and none reads. Writes "ready" to
DIR/port once all are connected (or refused), holds them argv[4] seconds, then exits."""
import os
import socket
import sys
import time

out_dir, n, port, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
socks = []
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    socks.append(s)
with open(os.path.join(out_dir, "port"), "w") as f:
    f.write("1\n")
end = time.monotonic() + hold
req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
k = 0
while time.monotonic() < end:
    for i, s in enumerate(socks):
        if i % 2 == 1 and k < len(req):
            try:
                s.send(req[k:k + 1])
            except OSError:
                pass
    k += 1
    time.sleep(0.2)
