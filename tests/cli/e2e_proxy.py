#!/usr/bin/env python3
"""A loopback TCP proxy that cuts the network under a download (e2e_faults.sh).

Usage: e2e_proxy.py PORT_FILE TARGET_PORT STATS_FILE EVENT...
Listens on an ephemeral 127.0.0.1 port (written to PORT_FILE) and forwards
every connection to 127.0.0.1:TARGET_PORT, bytes unchanged (TLS passes
through). EVENT is reset@N or stall@N: when the bytes sent towards the client,
counted over all connections, reach N, the connection carrying them is cut:
reset closes both sides at once with a TCP RST to the client (a dropped
link); stall stops forwarding and leaves the connection open (a link gone
silent), until the client gives up on it. Each event happens once, in order;
later connections pass through. STATS_FILE gets, after each connection,
{"connections": C, "down": BYTES, "events": [...done...]}.
"""
import json
import os
import socket
import struct
import sys
import threading

port_file, target_port, stats_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
events = []
for spec in sys.argv[4:]:
    kind, at = spec.split("@")
    assert kind in ("reset", "stall"), spec
    events.append((kind, int(at)))

lock = threading.Lock()
state = {"connections": 0, "down": 0, "events": []}


def save():
    tmp = stats_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, stats_file)


def close(s):
    try:
        s.close()
    except OSError:
        pass


def handle(client):
    try:
        server = socket.create_connection(("127.0.0.1", target_port), timeout=10)
    except OSError:
        close(client)
        return
    server.settimeout(None)
    with lock:
        state["connections"] += 1
    stalled = threading.Event()

    def up():  # client -> server, unchanged
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                server.sendall(data)
        except OSError:
            pass
        close(server)
        stalled.set()

    t = threading.Thread(target=up, daemon=True)
    t.start()
    try:
        while True:
            data = server.recv(65536)
            if not data:
                break
            cut = None
            with lock:
                pending = [e for e in events if e not in state["events"]]
                if pending and state["down"] + len(data) >= pending[0][1]:
                    cut = pending[0]
                    data = data[: max(0, cut[1] - state["down"])]
                    state["events"].append(cut)
                state["down"] += len(data)
            if data:
                client.sendall(data)
            if cut and cut[0] == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                break
            if cut and cut[0] == "stall":
                stalled.wait(120)  # until the client hangs up
                break
    except OSError:
        pass
    close(client)
    close(server)
    t.join(5)
    with lock:
        save()


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(16)
with lock:
    save()
with open(port_file + ".tmp", "w") as f:
    f.write(str(listener.getsockname()[1]))
os.replace(port_file + ".tmp", port_file)
while True:
    c, _ = listener.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
