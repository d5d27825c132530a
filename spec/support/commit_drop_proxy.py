#!/usr/bin/env python3
"""A TCP proxy in front of PostgreSQL that loses the answer to a COMMIT.

    commit_drop_proxy.py DIR UPSTREAM_HOST UPSTREAM_PORT [--drops N] [--refuse-for SECONDS]
                         [--max-conns N]

Listens on 127.0.0.1 (a free port, written to DIR/port) and forwards every
connection to UPSTREAM. It reads the client's side of the protocol: in a
transaction (since its BEGIN) that deleted rows of attack_resource_files (a
simple query that names such a DELETE, or an Execute after a Parse of one), the COMMIT is
forwarded, the server's answer is awaited (so the server did commit), and
then both sockets are closed without passing the answer on. The first N
such COMMITs (default 1) are dropped; later ones pass. With --refuse-for S,
every connection made in the S seconds after a drop is closed at once (the
database looks unreachable); S < 0: forever. DIR/dropped counts the drops.
With --max-conns N, a connection beyond N open at once is closed at once
(a connection limit: the sweep's second session cannot be opened).
SSL and GSS encryption requests are answered "no" (the proxy reads plain
text). Test use only.
"""
import os
import select
import socket
import struct
import sys
import threading
import time

SSL_REQUEST = 80877103
GSS_REQUEST = 80877104

state = {"drops_left": 1, "refuse_for": 0.0, "refuse_until": 0.0, "dropped": 0, "max_conns": 0, "open": 0}
lock = threading.Lock()


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def pump_server(server, client, stop):
    """Forward the server's bytes to the client until stop is set or either side ends."""
    try:
        while not stop.is_set():
            r, _, _ = select.select([server], [], [], 0.1)
            if not r:
                continue
            data = server.recv(65536)
            if not data:
                break
            if stop.is_set():
                break
            client.sendall(data)
    except OSError:
        pass
    if not stop.is_set():  # the server ended it: so does the client's side
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass


TABLE = b"attack_resource_files"


def deletes_resources(payload):
    """A DELETE of the resources' rows (not, say, of the cancel requests a cycle takes first)."""
    return b"DELETE" in payload.upper() and TABLE in payload


def handle(client, upstream, outdir):
    server = None
    try:
        # Startup: answer encryption requests ourselves, then pass the startup message on.
        while True:
            head = recv_exact(client, 8)
            length, code = struct.unpack("!II", head)
            if code in (SSL_REQUEST, GSS_REQUEST) and length == 8:
                client.sendall(b"N")
                continue
            rest = recv_exact(client, length - 8)
            break
        server = socket.create_connection(upstream)
        server.sendall(head + rest)
        # From the server the gate (per write) is whether this connection is being dropped.
        stop = threading.Event()
        t = threading.Thread(target=pump_server, args=(server, client, stop), daemon=True)
        t.start()
        in_delete = parsed_delete = False
        while True:
            kind = recv_exact(client, 1)
            (length,) = struct.unpack("!I", recv_exact(client, 4))
            payload = recv_exact(client, length - 4)
            msg = kind + struct.pack("!I", length) + payload
            if kind == b"Q":
                text = payload.strip(b"\0 \t\r\n;").upper()
                if text.startswith(b"BEGIN") or text.startswith(b"START"):  # settings may follow
                    in_delete = False
                elif text == b"COMMIT" and in_delete:
                    with lock:
                        drop = state["drops_left"] != 0
                        if drop:
                            state["drops_left"] -= 1
                    if drop:
                        stop.set()
                        t.join()
                        server.sendall(msg)
                        # The server's answer arrives (it committed); it is not passed on.
                        server.settimeout(30)
                        try:
                            server.recv(65536)
                        except OSError:
                            pass
                        with lock:
                            state["dropped"] += 1
                            if state["refuse_for"] != 0:
                                state["refuse_until"] = (float("inf") if state["refuse_for"] < 0
                                                         else time.monotonic() + state["refuse_for"])
                            n = state["dropped"]
                        with open(os.path.join(outdir, "dropped.tmp"), "w") as f:
                            f.write("%d\n" % n)
                        os.replace(os.path.join(outdir, "dropped.tmp"), os.path.join(outdir, "dropped"))
                        return
                elif text in (b"COMMIT", b"ROLLBACK", b"END", b"ABORT"):
                    in_delete = False
            # A DELETE runs when it is a simple query, or when an Execute follows its Parse: a Parse
            # alone (a statement checked when the session opens) deletes nothing.
            if kind == b"Q" and deletes_resources(payload):
                in_delete = True
            elif kind == b"P":
                parsed_delete = deletes_resources(payload)
            elif kind == b"E" and parsed_delete:
                in_delete = True
            server.sendall(msg)
    except (OSError, ConnectionError, struct.error):
        pass
    finally:
        with lock:
            state["open"] -= 1
        for s in (client, server):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


def main():
    outdir, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    args = sys.argv[4:]
    while args:
        opt = args.pop(0)
        if opt == "--drops":
            state["drops_left"] = int(args.pop(0))
        elif opt == "--max-conns":
            state["max_conns"] = int(args.pop(0))
        elif opt == "--refuse-for":
            state["refuse_for"] = float(args.pop(0))
        else:
            sys.exit("unknown option " + opt)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    with open(os.path.join(outdir, "port.tmp"), "w") as f:
        f.write("%d\n" % lsock.getsockname()[1])
    os.replace(os.path.join(outdir, "port.tmp"), os.path.join(outdir, "port"))
    while True:
        client, _ = lsock.accept()
        with lock:
            refuse = time.monotonic() < state["refuse_until"] or (
                state["max_conns"] > 0 and state["open"] >= state["max_conns"])
            if not refuse:
                state["open"] += 1
        if refuse:
            client.close()
            continue
        threading.Thread(target=handle, args=(client, (host, port), outdir), daemon=True).start()


if __name__ == "__main__":
    main()
