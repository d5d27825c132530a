#!/usr/bin/env python3
"""TLS in front of the harness's RGW, for the TLS specs: terminate HTTPS with a given
certificate on a free loopback port and pass the bytes through to a plain TCP upstream.

    tls_proxy.py DIR CERT KEY UPSTREAM_HOST UPSTREAM_PORT

Writes the port to DIR/port, and appends one line per TLS connection accepted (handshake
done) to DIR/connections, so a spec can tell its requests really went through here.
"""
import asyncio
import os
import ssl
import sys


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError, ssl.SSLError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    d, cert, key, host, port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    async def handle(reader, writer):
        with open(os.path.join(d, "connections"), "a") as f:
            f.write("tls\n")
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    tmp = os.path.join(d, "port.tmp")
    with open(tmp, "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    os.rename(tmp, os.path.join(d, "port"))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
