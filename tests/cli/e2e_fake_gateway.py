#!/usr/bin/env python3
"""Plays the cloud's end of the device channel for one connection (e2e_faults.sh):
offers a job the device already ran, twice, and records the answers.

Usage: e2e_fake_gateway.py PORT CERT_CHAIN KEY DEVICE_CA JOB_JSON ACK_EPOCH ACK_SEQ OUT
Mutual TLS with the lab's server certificate, the WebSocket upgrade, then
hello -> hello.ack (acked: ACK_EPOCH/ACK_SEQ, what the real cloud recorded,
so the device drops nothing the real cloud has not), then the `job` message
JOB_JSON (docs/protocol.md) two times. OUT gets {"hello": ..., "acks":
[job.ack, job.ack]}. Reports are neither recorded nor acknowledged. Exits 0
when both answers came within 20 s.
"""
import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import sys
import time

port, chain, key, ca, job_json, ack_epoch, ack_seq, out = sys.argv[1:9]
job = json.loads(job_json)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(chain, key)
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(ca)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(port)))
listener.listen(4)
listener.settimeout(30)
deadline = time.time() + 40
sock = None
while sock is None:
    raw, _ = listener.accept()
    try:
        sock = ctx.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError) as e:  # a connect attempt cut short; the next one
        print("fake gateway: handshake failed:", e, file=sys.stderr)
        raw.close()
        if time.time() > deadline:
            sys.exit("fake gateway: no device connected")
sock.settimeout(20)
buf = b""
while b"\r\n\r\n" not in buf:
    chunk = sock.recv(4096)
    if not chunk:
        sys.exit("fake gateway: closed during the upgrade")
    buf += chunk
head, buf = buf.split(b"\r\n\r\n", 1)
headers = {}
for line in head.decode().split("\r\n")[1:]:
    k, _, v = line.partition(":")
    headers[k.strip().lower()] = v.strip()
accept = base64.b64encode(hashlib.sha1(
    (headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())


def send(msg):
    data = json.dumps(msg).encode()
    n = len(data)
    hdr = bytes([0x81]) + (bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n))
    sock.sendall(hdr + data)


def recv():
    global buf

    def need(k):
        global buf
        while len(buf) < k:
            chunk = sock.recv(65536)
            if not chunk:
                sys.exit("fake gateway: the device closed the connection")
            buf += chunk
    need(2)
    op, n, off = buf[0] & 0x0F, buf[1] & 0x7F, 2
    if n == 126:
        need(4); n = struct.unpack(">H", buf[2:4])[0]; off = 4
    elif n == 127:
        need(10); n = struct.unpack(">Q", buf[2:10])[0]; off = 10
    need(off + 4 + n)
    mask = buf[off:off + 4]
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buf[off + 4:off + 4 + n]))
    buf = buf[off + 4 + n:]
    return op, payload


now = lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
result = {"hello": None, "acks": []}
end = time.time() + 20
while time.time() < end and len(result["acks"]) < 2:
    op, payload = recv()
    if op == 8:
        sys.exit("fake gateway: the device closed the channel")
    if op == 9:
        sock.sendall(bytes([0x8A, len(payload)]) + payload)
        continue
    if op != 1:
        continue
    m = json.loads(payload)
    if m["type"] == "hello":
        result["hello"] = m
        send({"v": 1, "type": "hello.ack", "id": "g1", "re": m["id"], "server_time": now(),
              "heartbeat_s": 2, "acked": {"epoch": ack_epoch, "seq": int(ack_seq)}})
        send(dict({"v": 1, "type": "job", "id": "g2"}, **job))
    elif m["type"] == "job.ack":
        result["acks"].append(m)
        if len(result["acks"]) == 1:
            send(dict({"v": 1, "type": "job", "id": "g3"}, **job))
    elif m["type"] == "heartbeat":
        send({"v": 1, "type": "heartbeat", "id": "h" + str(time.time()), "time": now()})
with open(out, "w") as f:
    json.dump(result, f)
try:
    sock.sendall(bytes([0x88, 2]) + struct.pack(">H", 1000))
    sock.close()
except OSError:
    pass
sys.exit(0 if len(result["acks"]) == 2 else "fake gateway: fewer than two answers")
