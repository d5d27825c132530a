#!/usr/bin/env python3
"""Just enough of a Kubernetes API server for `kubectl apply --dry-run=client`, which needs the
server's discovery documents to map a manifest's kinds to resources even when it sends nothing.

    fake_kube_api.py DIR

Serves the legacy discovery documents for the core group (Secret, ConfigMap), batch/v1
(CronJob, Job) and apps/v1 (Deployment) on a free loopback port written to DIR/port, answers 404
to every object GET (nothing exists yet, so a client dry run reports "created"), and 404 to the
OpenAPI documents (kubectl is run with --validate=false: the real schemas need a real cluster).
Every request is appended to DIR/requests, so a spec can tell kubectl really asked here.
"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RESOURCES = {
    "/api/v1": [("secrets", "Secret"), ("configmaps", "ConfigMap")],
    "/apis/batch/v1": [("cronjobs", "CronJob"), ("jobs", "Job")],
    "/apis/apps/v1": [("deployments", "Deployment")],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def resource_list(path):
    group_version = path[len("/api/"):] if path.startswith("/api/") else path[len("/apis/"):]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [{"name": n, "singularName": k.lower(), "namespaced": True, "kind": k,
                       "verbs": VERBS} for n, k in RESOURCES[path]],
    }


DOCS = {
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
        "name": g, "versions": [{"groupVersion": g + "/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": g + "/v1", "version": "v1"}} for g in ("batch", "apps")]},
    "/version": {"major": "1", "minor": "32", "gitVersion": "v1.32.0"},
}
for p in RESOURCES:
    DOCS[p] = resource_list(p)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        with open(os.path.join(sys.argv[1], "requests"), "a") as f:
            f.write(f"GET {path}\n")
        if path in DOCS:
            body, status = DOCS[path], 200
        else:
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                    "code": 404, "message": f"{path} not found"}
            status = 404
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = os.path.join(sys.argv[1], "port.tmp")
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, os.path.join(sys.argv[1], "port"))
    server.serve_forever()


if __name__ == "__main__":
    main()
