#!/usr/bin/env python3
"""A misbehaving S3 server for the bad-input and fuzz-regression specs: it answers each kind
of request with a configured reply, so the sweep (real PostgreSQL, real resclean) can be
shown what a broken or hostile server sends (HTML pages, truncated or huge XML, odd
statuses). Integration specs use the real RGW; this is only for replies RGW never gives.
It checks no signatures.

    faults_fake_s3.py DIR     listen on a free loopback port, write it to DIR/port

Request kinds: list (GET ...list-type=2), head (HEAD), delete_objects (POST ...?delete),
delete (DELETE), put (PUT), other. Defaults: an empty ListBucketResult, HEAD 404, a
DeleteResult listing every requested key as <Deleted>, DELETE 204, PUT 200.

Control (JSON over HTTP on the same port):
    PUT /__config   {"<kind>": reply, ...}  replaces the replies of those kinds; a reply is
                    {"status": 200, "headers": {}, "body": "...", "repeat": N (body N times),
                     "body_file": path (the body, bytes as they are in the file),
                     "echo": true (a DeleteResult listing the requested keys as Deleted),
                     "short": N (announce the body's length, send N bytes, close),
                     "drop": true (close without answering)}
    GET /__log      [{method, path, kind, keys, headers}] of every request so far
    DELETE /__log   forget it
"""
import json
import os
import sys
import threading
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

LOCK = threading.Lock()
LOG = []
LIST_EMPTY = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
              'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><KeyCount>0</KeyCount>'
              '<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>')
DEFAULTS = {
    "list": {"status": 200, "body": LIST_EMPTY, "headers": {"Content-Type": "application/xml"}},
    "head": {"status": 404},
    "delete_objects": {"status": 200, "echo": True},
    "delete": {"status": 204},
    "put": {"status": 200, "headers": {"ETag": '"0"'}},
    "other": {"status": 200, "body": ""},
}
CONFIG = dict(DEFAULTS)


def kind_of(method, path):
    if method == "HEAD":
        return "head"
    if method == "GET" and "list-type=2" in path:
        return "list"
    if method == "POST" and ("?delete" in path):
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
        keys = request_keys(body) if kind == "delete_objects" else None
        with LOCK:
            LOG.append({"method": self.command, "path": self.path, "kind": kind, "keys": keys,
                        "headers": {k.lower(): v for k, v in self.headers.items()}})
            reply = CONFIG.get(kind) or DEFAULTS[kind]
        if reply.get("drop"):
            self.close_connection = True
            return
        if reply.get("echo"):
            out = ('<?xml version="1.0" encoding="UTF-8"?><DeleteResult>'
                   + "".join("<Deleted><Key>%s</Key></Deleted>" % escape(k) for k in keys or [])
                   + "</DeleteResult>").encode()
        elif "body_file" in reply:
            with open(reply["body_file"], "rb") as f:
                out = f.read()
        else:
            out = reply.get("body", "").encode() * int(reply.get("repeat", 1))
        self.send_response(reply.get("status", 200))
        for k, v in reply.get("headers", {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            if "short" in reply:
                self.wfile.write(out[:int(reply["short"])])
                self.wfile.flush()
                self.close_connection = True
            else:
                self.wfile.write(out)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def control(self, body):
        status, out = 200, b""
        with LOCK:
            if self.path == "/__config" and self.command == "PUT":
                CONFIG.clear()
                CONFIG.update(DEFAULTS)
                CONFIG.update(json.loads(body or b"{}"))
            elif self.path == "/__log" and self.command == "GET":
                out = json.dumps(LOG).encode()
            elif self.path == "/__log" and self.command == "DELETE":
                LOG.clear()
            else:
                status = 404
        self.send_response(status)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


def main():
    d = sys.argv[1]
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    tmp = os.path.join(d, "port.tmp")
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, os.path.join(d, "port"))
    srv.serve_forever()


if __name__ == "__main__":
    main()
