#!/usr/bin/env python3
"""A TCP proxy that adds network latency, for the bench's remote profile: every chunk read
from one side is written to the other side a fixed time later, in each direction, in order.
Requests in flight are not serialised (a chunk waits its own delay, not the one before it),
so it behaves like a long wire, not like a slow server. No bandwidth limit, no loss.

    delay_proxy.py DIR UPSTREAM_HOST UPSTREAM_PORT UP_MS [DOWN_MS]

UP_MS delays client -> upstream, DOWN_MS (default UP_MS) upstream -> client; a round trip
costs UP_MS + DOWN_MS more. Listens on a free loopback port and writes it to DIR/port.
On SIGTERM writes DIR/stats (connections, chunks, and the delay really added: mean and p99)
and exits.

Threads, not asyncio: an event loop sleeps in whole milliseconds (epoll), which turns a
0.5 ms delay into 1 to 2 ms; a thread's sleep (clock_nanosleep) keeps it within ~0.1 ms.
Each direction of a connection is a reader (recv, stamp, queue) and a writer (wait for the
stamp plus the delay, send).
"""
import collections
import os
import signal
import socket
import sys
import threading
import time

LOCK = threading.Lock()
STATS = {"connections": 0, "chunks": 0, "bytes": 0}
LATE = []  # seconds each chunk really waited here, a sample


def note(waited, n):
    with LOCK:
        STATS["chunks"] += 1
        STATS["bytes"] += n
        if len(LATE) < 200000:
            LATE.append(waited)


def shut(sock, how):
    try:
        sock.shutdown(how)
    except OSError:
        pass


def pipe(src, dst, delay, done):
    """Copy src to dst, each chunk `delay` seconds after it was read; EOF likewise."""
    queue = collections.deque()
    cond = threading.Condition()

    def reader():
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            with cond:
                queue.append((time.monotonic(), data))
                cond.notify()
            if not data:
                return

    def writer():
        try:
            while True:
                with cond:
                    while not queue:
                        cond.wait()
                    arrived, data = queue.popleft()
                due = arrived + delay
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                if not data:
                    shut(dst, socket.SHUT_WR)
                    return
                note(time.monotonic() - arrived, len(data))
                dst.sendall(data)
        except OSError:
            shut(src, socket.SHUT_RDWR)
        finally:
            done()

    for fn in (reader, writer):
        threading.Thread(target=fn, daemon=True).start()


def serve(client, host, port, up, down):
    try:
        upstream = socket.create_connection((host, port))
    except OSError:
        client.close()
        return
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    left = [2]

    def done():  # both directions finished: close both sockets
        with LOCK:
            left[0] -= 1
            last = left[0] == 0
        if last:
            client.close()
            upstream.close()

    pipe(client, upstream, up, done)
    pipe(upstream, client, down, done)


def stats(d):
    with LOCK:
        late = sorted(LATE)
        s = dict(STATS)
    mean = sum(late) / len(late) if late else 0.0
    p99 = late[min(len(late) - 1, int(len(late) * 0.99))] if late else 0.0
    with open(os.path.join(d, "stats.tmp"), "w") as f:
        f.write("connections %d chunks %d bytes %d delay_mean_ms %.3f delay_p99_ms %.3f\n"
                % (s["connections"], s["chunks"], s["bytes"], mean * 1000, p99 * 1000))
    os.rename(os.path.join(d, "stats.tmp"), os.path.join(d, "stats"))


def main():
    d, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    up = float(sys.argv[4]) / 1000.0
    down = float(sys.argv[5]) / 1000.0 if len(sys.argv) > 5 else up
    sys.setswitchinterval(0.0001)  # a writer whose time came must not wait 5 ms for the GIL

    def on_term(*_):
        stats(d)
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(512)
    tmp = os.path.join(d, "port.tmp")
    with open(tmp, "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.rename(tmp, os.path.join(d, "port"))
    while True:
        client, _ = srv.accept()
        with LOCK:
            STATS["connections"] += 1
        threading.Thread(target=serve, args=(client, host, port, up, down), daemon=True).start()


if __name__ == "__main__":
    main()
