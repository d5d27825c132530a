#!/usr/bin/env python3
"""A scripted, recording stand-in for an S3 server, for the failure modes a real server
will not produce on demand (HTML or truncated replies, 5xx, dropped connections, huge
bodies). The integration specs use the real RGW; this is only for resclean.s3's own
robustness specs. It checks no signatures.

    fake_s3.py DIR [CERT KEY]   listen on a free loopback port (TLS with CERT and KEY),
                                write the port to DIR/port

Control (JSON over HTTP on the same port):
    PUT /__script    body: a list of replies; each request takes the next one, the last
                     one repeats. A reply: {"status": 200, "headers": {}, "body": "...",
                     "repeat": N (body sent N times), "chunked": true (no Content-Length), "delay": seconds, "drop": true (close
                     without answering), "delete_result": {"omit": [keys], "errors": {key:
                     code}, "nokey": false} (a DeleteResult built from the request's keys)}
    GET /__log       what was received: [{method, path, headers, body_len, md5_ok, keys}]
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
SCRIPT = [{"status": 200, "body": ""}]
LOG = []


def delete_keys(body):
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
        global SCRIPT
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if self.path.startswith("/__"):
            return self.control(body)
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        keys = delete_keys(body) if self.path.endswith("?delete") or "?delete=" in self.path else None
        with LOCK:
            LOG.append({
                "method": self.command, "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_len": len(body),
                "md5_ok": self.headers.get("Content-MD5") == md5,
                "keys": keys,
            })
            reply = SCRIPT[0] if len(SCRIPT) == 1 else SCRIPT.pop(0)
        if reply.get("delay"):
            time.sleep(reply["delay"])
        if reply.get("drop"):
            self.close_connection = True
            return
        out = reply.get("body", "")
        if "delete_result" in reply:
            out = self.delete_result(reply["delete_result"], keys or [])
        data = out.encode() * int(reply.get("repeat", 1))
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
            else:
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def delete_result(self, spec, keys):
        parts = ['<?xml version="1.0" encoding="UTF-8"?><DeleteResult>']
        for k in keys:
            if k in spec.get("omit", []):
                continue
            if k in spec.get("errors", {}):
                parts.append("<Error><Key>%s</Key><Code>%s</Code><Message>no</Message></Error>"
                             % (escape(k), spec["errors"][k]))
            elif spec.get("nokey"):
                parts.append("<Deleted></Deleted>")
            else:
                parts.append("<Deleted><Key>%s</Key></Deleted>" % escape(k))
        parts.append("</DeleteResult>")
        return "".join(parts)

    def control(self, body):
        global SCRIPT
        status, out = 200, b""
        with LOCK:
            if self.path == "/__script" and self.command == "PUT":
                SCRIPT = json.loads(body) or [{"status": 200}]
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
