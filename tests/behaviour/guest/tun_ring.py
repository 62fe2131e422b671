"""Run inside a guest: the guest kernel's own tun ring, exactly accounted.

Opens a tap (IFF_TAP | IFF_NO_PI) and does not read it; sends frames into it
through an AF_PACKET socket (the kernel's transmit path into tun_net_xmit,
no qdisc in between), counting refusals; then reads everything back.  Prints one JSON object.
Usage: tun_ring.py NAME TX_QUEUE_LEN COUNT [RESIZE_TO]
"""
import errno
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys

TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000


def stat(name, counter):
    with open(f"/sys/class/net/{name}/statistics/{counter}") as f:
        return int(f.read())


def main():
    name, qlen, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    resize = int(sys.argv[4]) if len(sys.argv) > 4 else None
    tap = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    subprocess.run(["ip", "link", "set", name, "txqueuelen", str(qlen), "up"], check=True)
    # no qdisc in front of the ring (a tap gets the default qdisc, which would
    # queue what the ring refuses): frames go straight to tun_net_xmit
    subprocess.run(["tc", "qdisc", "replace", "dev", name, "root", "noqueue"], check=True)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((name, 0))
    sock.setblocking(False)
    dropped_before = stat(name, "tx_dropped")
    accepted, refused = [], 0
    for seq in range(count):
        frame = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + struct.pack("!I", seq) + bytes(42)
        try:
            sock.send(frame)
            accepted.append(seq)
        except OSError as e:
            if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                raise
            refused += 1
    tx_dropped = stat(name, "tx_dropped") - dropped_before
    if resize is not None:
        subprocess.run(["ip", "link", "set", name, "txqueuelen", str(resize)], check=True)
    read = []
    while True:
        try:
            frame = os.read(tap, 2048)
        except BlockingIOError:
            break
        if frame[12:14] == b"\x88\xb5":
            read.append(struct.unpack("!I", frame[14:18])[0])
    print(json.dumps({"accepted": accepted, "refused": refused, "tx_dropped": tx_dropped, "read": read}))


if __name__ == "__main__":
    main()
