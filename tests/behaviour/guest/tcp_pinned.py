"""Run inside a guest: one TCP connection between two processes pinned to
given CPUs, so that where each skb was allocated (the sender's CPU) and
where it was read (the reader's) are known.

  tcp_pinned.py server ADDR PORT CPU [QUEUED CHUNK]
      accept one connection and read it to EOF; with QUEUED, first wait
      until that many bytes are queued unread (a receive buffer that holds
      them all), then read CHUNK bytes a call: the sender has finished and
      sits idle while every skb is read
  tcp_pinned.py client ADDR PORT CPU COUNT SIZE GAP_MS
      COUNT writes of SIZE bytes, GAP_MS apart, TCP_NODELAY (one segment
      each); then shut down its side and wait, blocked, for the server's EOF

The client retries its connect until the server listens (30 s).  Each
prints one JSON object: the bytes it moved.
"""
import fcntl
import json
import os
import socket
import struct
import sys
import time

FIONREAD = 0x541B
BIG_BUFFER = 16 << 20  # the guest's net.core.{r,w}mem_max must allow it


def server(addr, port, cpu, queued=0, chunk=1 << 18):
    os.sched_setaffinity(0, {cpu})
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if queued:  # before listen(): the window scale is chosen at the handshake
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BIG_BUFFER)
    listener.bind((addr, port))
    listener.listen(1)
    conn, _ = listener.accept()
    waited = 0.0
    if queued:
        start = time.monotonic()
        while struct.unpack("i", fcntl.ioctl(conn, FIONREAD, b"\0" * 4))[0] < queued:
            if time.monotonic() - start > 60:
                sys.exit(f"only {struct.unpack('i', fcntl.ioctl(conn, FIONREAD, b'    '))[0]} of {queued} "
                         "bytes were queued within 60 s")
            time.sleep(0.01)
        waited = time.monotonic() - start
    received = 0
    while True:
        data = conn.recv(chunk)
        if not data:
            break
        received += len(data)
    conn.close()
    print(json.dumps({"received": received, "queued_after_s": round(waited, 3)}), flush=True)


def connect(addr, port, limit=30.0):
    deadline = time.monotonic() + limit
    while True:
        try:
            return socket.create_connection((addr, port), timeout=120)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def client(addr, port, cpu, count, size, gap_ms):
    os.sched_setaffinity(0, {cpu})
    sock = connect(addr, port)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = b"x" * size
    for _ in range(count):
        sock.sendall(payload)
        if gap_ms:
            time.sleep(gap_ms / 1000)
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(1 << 16):  # blocked, idle, until the server has read everything
        pass
    sock.close()
    print(json.dumps({"sent": count * size}), flush=True)


if __name__ == "__main__":
    mode, addr, port, cpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if mode == "server":
        server(addr, port, cpu, *(int(a) for a in sys.argv[5:7]))
    else:
        client(addr, port, cpu, int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]))
