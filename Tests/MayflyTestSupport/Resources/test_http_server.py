#!/usr/bin/env python3
"""A small real HTTP/HTTPS server for Mayfly's HTTP client tests.

Serves on 127.0.0.1 (port 0 = any free port) and writes the port to --port-file once it listens.
Routes:
  ANY  /echo            -> JSON {method, path, headers, body_length, body_sha256, body, chunked}
  ANY  /status/NNN      -> status NNN; ?header=Name:Value adds response headers
  GET  /slow?ms=N       -> waits N ms, then 200 "slow"
  GET  /bytes?n=N       -> N bytes of 'x'
  ANY  /flaky?key=K&fail=N&status=S -> status S (default 503) for the first N requests with key K, then 200 with the count
"""
import argparse
import hashlib
import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


COUNTS = {}
COUNTS_LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size_line = self.rfile.readline().strip()
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return bytes(data), True
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length", "0") or 0)
        return (self.rfile.read(length) if length else b""), False

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        body, chunked = self.read_body()
        if url.path == "/echo":
            payload = {
                "method": self.command,
                "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body_length": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body": body[:4096].decode("utf-8", "replace"),
                "chunked": chunked,
            }
            self.reply(200, json.dumps(payload).encode(), [("Content-Type", "application/json"), ("X-Echo-Method", self.command)])
        elif url.path.startswith("/status/"):
            status = int(url.path.split("/")[2])
            headers = [tuple(h.split(":", 1)) for h in query.get("header", [])]
            self.reply(status, f"status {status}".encode(), headers)
        elif url.path == "/slow":
            time.sleep(int(query.get("ms", ["1000"])[0]) / 1000)
            self.reply(200, b"slow")
        elif url.path == "/flaky":
            key = query.get("key", [""])[0]
            with COUNTS_LOCK:
                COUNTS[key] = COUNTS.get(key, 0) + 1
                count = COUNTS[key]
            if count <= int(query.get("fail", ["0"])[0]):
                headers = [tuple(h.split(":", 1)) for h in query.get("header", [])]
                self.reply(int(query.get("status", ["503"])[0]), b"try again", headers)
            else:
                self.reply(200, str(count).encode())
        elif url.path == "/bytes":
            self.reply(200, b"x" * int(query.get("n", ["0"])[0]))
        else:
            self.reply(404, b"not found")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--client-ca", help="require a client certificate signed by this CA")
    args = parser.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        if args.client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(args.client_ca)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, args.port_file)
    # Exit when the test process that started us goes away (stdin closes).

    def watch_stdin():
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
