"""A stand-in for systemd's notification socket, for specs: binds a unix datagram socket
(argv[2]: a path, or @name for an abstract one), writes "ready" to DIR/port once bound, and
appends each datagram it receives to DIR/messages, one per line with newlines shown as |."""
import os
import socket
import sys

out_dir, name = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind("\0" + name[1:] if name.startswith("@") else name)
with open(os.path.join(out_dir, "port"), "w") as f:
    f.write("1\n")
with open(os.path.join(out_dir, "messages"), "a") as f:
    while True:
        msg = sock.recv(65536).decode("utf-8", "replace")
        f.write(msg.replace("\n", "|") + "\n")
        f.flush()
