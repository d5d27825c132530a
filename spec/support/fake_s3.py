#!/usr/bin/env python3
"""A scripted, recording stand-in for an S3 server, for the failure modes a real server
will not produce on demand (HTML or truncated replies, 5xx, dropped connections, huge
bodies, hostile XML). The integration specs use the real RGW; this is only for the specs of
resclean.s3's own robustness, of bad input and of fuzz regressions. It checks no signatures.

    fake_s3.py DIR [CERT KEY]   listen on a free loopback port (TLS with CERT and KEY),
                                write the port to DIR/port

A request gets its reply in one of two ways:
  * by its kind (the default): list (GET ...list-type=2), head (HEAD), delete_objects
    (POST ...?delete), delete (DELETE), put (PUT), other. Defaults: an empty
    ListBucketResult, HEAD 404, a DeleteResult listing every requested key as <Deleted>,
    DELETE 204, PUT 200.
  * from a script: each request takes the next reply, the last one repeats.

A reply: {"status": 200, "headers": {}, "body": "...", "repeat": N (body sent N times),
          "body_file": path (the body, bytes as they are in the file),
          "chunked": true (no Content-Length), "length": N (a HEAD's Content-Length),
          "delay": seconds, "drop": true (close without answering),
          "serial": seconds (like delay, but one request at a time: a server that is the
                    bottleneck, where more requests in flight only queue),
          "short": N (announce the body's length, send N bytes, close),
          "delete_result": {"omit": [keys], "errors": {key: code}, "nokey": false,
                            "times": N}
                           (a DeleteResult built from the request's keys; with "times",
                           a key in "errors" fails only the first N DeleteObjects requests
                           that carry it, then is deleted),
          "echo": true (the same as "delete_result": {})}

Control (JSON over HTTP on the same port):
    PUT /__config    {"<kind>": reply, ...}: replies by kind, the defaults for the kinds not
                     given; ends a script
    PUT /__script    a list of replies: the script (an empty list: [{"status": 200}])
    GET /__log       what was received: [{method, path, kind, headers, body_len, md5_ok, keys, t}]
                     (t: seconds on the server's monotonic clock when the request came)
    DELETE /__log    forget it
"""
import base64
import hashlib
import json
import os
import ssl
import sys
import threading
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

LOCK = threading.Lock()
SERIAL = threading.Lock()
LOG = []
LIST_EMPTY = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
              'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><KeyCount>0</KeyCount>'
              '<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>')
DEFAULTS = {
    "list": {"status": 200, "body": LIST_EMPTY, "headers": {"Content-Type": "application/xml"}},
    "head": {"status": 404},
    "delete_objects": {"status": 200, "delete_result": {}},
    "delete": {"status": 204},
    "put": {"status": 200, "headers": {"ETag": '"0"'}},
    "other": {"status": 200, "body": ""},
}
CONFIG = dict(DEFAULTS)
SCRIPT = None  # a list of replies while a script runs
SEEN = {}  # key -> how many DeleteObjects requests carried it (for "times")


def kind_of(method, path):
    if method == "HEAD":
        return "head"
    if method == "GET" and "list-type=2" in path:
        return "list"
    if method == "POST" and "?delete" in path:
        return "delete_objects"
    if method == "DELETE":
        return "delete"
    if method == "PUT":
        return "put"
    return "other"


def request_keys(body):
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    return [el.text or "" for el in root.iter() if el.tag.endswith("Key")]


def delete_result(spec, keys, quiet=False):
    """A DeleteResult for keys; Quiet (as S3): only the keys with an error are listed."""
    parts = ['<?xml version="1.0" encoding="UTF-8"?><DeleteResult>']
    times = spec.get("times")
    for k in keys:
        with LOCK:
            SEEN[k] = SEEN.get(k, 0) + 1
            seen = SEEN[k]
        if k in spec.get("omit", []):
            continue
        if k in spec.get("errors", {}) and (times is None or seen <= times):
            parts.append("<Error><Key>%s</Key><Code>%s</Code><Message>no</Message></Error>"
                         % (escape(k), spec["errors"][k]))
        elif quiet:
            continue
        elif spec.get("nokey"):
            parts.append("<Deleted></Deleted>")
        else:
            parts.append("<Deleted><Key>%s</Key></Deleted>" % escape(k))
    parts.append("</DeleteResult>")
    return "".join(parts)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if self.path.startswith("/__"):
            return self.control(body)
        kind = kind_of(self.command, self.path)
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        is_delete = self.path.endswith("?delete") or "?delete=" in self.path or kind == "delete_objects"
        keys = request_keys(body) if is_delete else None
        quiet = is_delete and b"<Quiet>true</Quiet>" in body
        with LOCK:
            LOG.append({
                "method": self.command, "path": self.path, "kind": kind,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_len": len(body),
                "md5_ok": self.headers.get("Content-MD5") == md5,
                "keys": keys,
                "quiet": quiet,
                "t": time.monotonic(),
            })
            if SCRIPT is None:
                reply = CONFIG.get(kind) or DEFAULTS[kind]
            else:
                reply = SCRIPT[0] if len(SCRIPT) == 1 else SCRIPT.pop(0)
        if reply.get("delay"):
            time.sleep(reply["delay"])
        if reply.get("serial"):
            with SERIAL:
                time.sleep(reply["serial"])
        if reply.get("drop"):
            self.close_connection = True
            return
        if "delete_result" in reply or reply.get("echo"):
            data = delete_result(reply.get("delete_result") or {}, keys or [], quiet).encode()
        elif "body_file" in reply:
            with open(reply["body_file"], "rb") as f:
                data = f.read()
        else:
            data = reply.get("body", "").encode() * int(reply.get("repeat", 1))
        self.send_response(reply.get("status", 200))
        for k, v in reply.get("headers", {}).items():
            self.send_header(k, v)
        self.send_header("x-amz-request-id", "fake-%d" % len(LOG))
        if self.command == "HEAD":
            self.send_header("Content-Length", str(reply.get("length", len(data))))
            self.end_headers()
            return
        try:
            if reply.get("chunked"):
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                step = 1 << 20
                for i in range(0, len(data), step):
                    part = data[i:i + step]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
            elif "short" in reply:
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:int(reply["short"])])
                self.wfile.flush()
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def control(self, body):
        global SCRIPT
        status, out = 200, b""
        with LOCK:
            if self.path == "/__config" and self.command == "PUT":
                SCRIPT = None
                CONFIG.clear()
                CONFIG.update(DEFAULTS)
                CONFIG.update(json.loads(body or b"{}"))
            elif self.path == "/__script" and self.command == "PUT":
                SCRIPT = json.loads(body) or [{"status": 200}]
            elif self.path == "/__log" and self.command == "GET":
                out = json.dumps(LOG).encode()
            elif self.path == "/__log" and self.command == "DELETE":
                LOG.clear()
                SEEN.clear()
            else:
                status = 404
        self.send_response(status)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


def main():
    d = sys.argv[1]
    ThreadingHTTPServer.request_queue_size = 256  # many connections at once (socketserver's is 5)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    if len(sys.argv) > 3:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    tmp = os.path.join(d, "port.tmp")
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, os.path.join(d, "port"))
    srv.serve_forever()


if __name__ == "__main__":
    main()
