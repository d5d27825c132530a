#!/usr/bin/env python3
"""An HTTP proxy in front of a real S3 server (the stack's RGW) that lies about deletes.

    hostile_s3_proxy.py DIR UPSTREAM_HOST UPSTREAM_PORT empty

Listens on 127.0.0.1 (a free port, written to DIR/port) and forwards every request to
UPSTREAM as it came (headers and body unchanged, so SigV4 signatures still hold), except
DeleteObjects (POST ...?delete), which it answers 200 with an empty <DeleteResult/>,
forwarding nothing: no key deleted, none reported failed (what a Quiet reply of a server
that deleted everything looks like). (A proxy that strips <Error> entries is the same to
the client for the keys it strips; RGW does not refuse single keys on demand, so the specs
use spec/support/fake_s3.py for that.)
DIR/deletes counts the DeleteObjects requests seen. Test use only.
"""
import http.client
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EMPTY = (b'<?xml version="1.0" encoding="UTF-8"?>'
         b'<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></DeleteResult>')
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}
LOCK = threading.Lock()
COUNT = [0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, headers, body, head=False):
        self.send_response_only(status)
        for k, v in headers:
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def forward(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        is_delete = self.command == "POST" and re.search(r"[?&]delete(=|&|$)", self.path)
        if is_delete:
            with LOCK:
                COUNT[0] += 1
                with open(os.path.join(self.server.dir, "deletes"), "w") as f:
                    f.write("%d\n" % COUNT[0])
            self.reply(200, [("Content-Type", "application/xml")], EMPTY)
            return
        up = http.client.HTTPConnection(self.server.upstream[0], self.server.upstream[1], timeout=60)
        try:
            up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                up.putheader(k, v)
            up.endheaders(body)
            res = up.getresponse()
            data = res.read()
            self.reply(res.status, res.getheaders(), data, head=self.command == "HEAD")
        finally:
            up.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward


def main():
    outdir, host, port, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if mode != "empty":
        sys.exit("mode: empty")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.dir, srv.upstream, srv.mode = outdir, (host, port), mode
    with open(os.path.join(outdir, "port.tmp"), "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.replace(os.path.join(outdir, "port.tmp"), os.path.join(outdir, "port"))
    srv.serve_forever()


if __name__ == "__main__":
    main()
