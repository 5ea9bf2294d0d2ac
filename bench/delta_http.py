#!/usr/bin/env python3
"""A rate-limited HTTP(S) file server on 127.0.0.1 for bench/delta_install_bench.sh.

Usage: delta_http.py ROOT PORT_FILE STATS_FILE RATE [CERT_CHAIN KEY]

Serves the files under ROOT (GET and HEAD; a single "Range: bytes=A-B" or
"bytes=A-" is answered 206, anything else 200 with the whole file), on an
ephemeral 127.0.0.1 port written to PORT_FILE, over TLS when CERT_CHAIN and
KEY are given. RATE (bytes per second, 0: none) limits everything it sends,
over all connections together, as one link would: each write of at most
16 KiB waits for its turn on a shared clock. After each request STATS_FILE
gets {"requests": N, "bytes": B, "body_bytes": BB, "log": [[method, path,
range, status, bytes, start_s, end_s], ...]}: bytes count the status line,
headers and body as sent (TLS records and handshakes not counted), start_s
and end_s are seconds since the server started.
"""
import json
import os
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

root, port_file, stats_file = os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3]
rate = int(sys.argv[4])
# Each response waits this long first (a link's latency, for the delta
# install's requests in flight): environment SAG_HTTP_DELAY_MS, default 0.
delay_s = float(os.environ.get("SAG_HTTP_DELAY_MS", "0")) / 1000
tls = sys.argv[5:7] if len(sys.argv) >= 7 else None

lock = threading.Lock()
state = {"requests": 0, "bytes": 0, "body_bytes": 0, "log": []}
t0 = time.monotonic()
link = {"free_at": 0.0}  # when the link has sent everything queued so far
STEP = 16 << 10


def save():
    tmp = stats_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, stats_file)


def paced_write(wfile, data, sent):
    """Sends data at `rate` over all connections together; counts in sent[0]."""
    for at in range(0, len(data), STEP):
        piece = data[at:at + STEP]
        if rate > 0:
            with lock:
                now = time.monotonic()
                start = max(now, link["free_at"])
                link["free_at"] = start + len(piece) / rate
            # The piece leaves when the link is done with it: the client
            # cannot have it earlier than a link of `rate` would deliver it.
            delay = start + len(piece) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        wfile.write(piece)
        sent[0] += len(piece)


def parse_range(header, size):
    """(first, last) of a single satisfiable range, else None."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if first == "":
            return None  # suffix ranges: not used by the clients benchmarked
        a = int(first)
        b = size - 1 if last == "" else min(int(last), size - 1)
    except ValueError:
        return None
    return (a, b) if 0 <= a <= b < size else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def serve(self, body):
        path = os.path.normpath(os.path.join(root, self.path.split("?")[0].lstrip("/")))
        sent = [0]
        began = time.monotonic()
        if delay_s > 0:
            time.sleep(delay_s)
        rng_header = self.headers.get("Range", "")
        if not path.startswith(root + os.sep) or not os.path.isfile(path):
            status, first, last, size = 404, 0, -1, 0
        else:
            size = os.path.getsize(path)
            rng = parse_range(rng_header, size)
            status, (first, last) = (206, rng) if rng else (200, (0, size - 1))
        length = last - first + 1
        reason = {200: "OK", 206: "Partial Content", 404: "Not Found"}[status]
        head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {length}", "Accept-Ranges: bytes",
                "Content-Type: application/octet-stream"]
        if status == 206:
            head.append(f"Content-Range: bytes {first}-{last}/{size}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode()
        try:
            paced_write(self.wfile, raw, sent)
            if body and length > 0:
                with open(path, "rb") as f:
                    f.seek(first)
                    left = length
                    while left > 0:
                        chunk = f.read(min(left, 256 << 10))
                        if not chunk:
                            break
                        paced_write(self.wfile, chunk, sent)
                        left -= len(chunk)
            self.wfile.flush()
        except (OSError, ssl.SSLError):
            self.close_connection = True
        finally:
            with lock:
                state["requests"] += 1
                state["bytes"] += sent[0]
                state["body_bytes"] += max(0, sent[0] - len(raw))
                state["log"].append([self.command, self.path, rng_header, status, sent[0],
                                     round(began - t0, 3), round(time.monotonic() - t0, 3)])
                save()

    def do_GET(self):
        self.serve(True)

    def do_HEAD(self):
        self.serve(False)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def get_request(self):
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            sock = context.wrap_socket(sock, server_side=True)
        return sock, addr


context = None
if tls:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls[0], tls[1])
server = Server(("127.0.0.1", 0), Handler)
save()
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.replace(port_file + ".tmp", port_file)
server.serve_forever()
