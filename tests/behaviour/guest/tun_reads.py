"""Run inside a guest: how the guest kernel's tun hands its ring to readers.

  tun_reads.py reads NAME     non-blocking, poll, zero-length, blocking reads;
                              a signal and an unregister wake a blocked reader
  tun_reads.py mq NAME        IFF_MULTI_QUEUE: flows spread over two rings,
                              a detached queue's ring is dropped, resizes
                              reach detached queues too
  tun_reads.py close NAME N Q N times: a tap whose ring holds Q frames is
                              closed unread (the slab counts are the test's)

Every call that could block runs under a watchdog, so a kernel that never
wakes a reader makes this print "hung" instead of hanging the test.  Prints
one JSON object.
"""
import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

TUNSETIFF, TUNSETQUEUE = 0x400454CA, 0x400454D9
IFF_TAP, IFF_NO_PI, IFF_MULTI_QUEUE = 0x0002, 0x1000, 0x0100
IFF_ATTACH_QUEUE, IFF_DETACH_QUEUE = 0x0200, 0x0400
ETH = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"


def frame(seq, flow=0):
    """IPv4/UDP, one flow per source port (tun picks a queue by flow hash)."""
    payload = struct.pack("!I", seq) + bytes(18)
    udp = struct.pack("!HHHH", 10000 + flow, 9, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq & 0xFFFF, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return ETH + ip + udp


def seq_of(data):
    return struct.unpack("!I", data[42:46])[0] if len(data) >= 46 and data[12:14] == b"\x08\x00" else None


def open_tap(name, flags=0, blocking=False):
    fd = os.open("/dev/net/tun", os.O_RDWR | (0 if blocking else os.O_NONBLOCK))
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | flags))
    return fd


def up(name, qlen):
    # no IPv6: its router solicitations and MLD reports would land in the rings
    with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
        f.write("1")
    subprocess.run(["ip", "link", "set", name, "txqueuelen", str(qlen), "up"], check=True)
    # no qdisc in front of the rings: frames go straight to tun_net_xmit
    subprocess.run(["tc", "qdisc", "replace", "dev", name, "root", "noqueue"], check=True)


def sender(name):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((name, 0))
    sock.setblocking(False)
    return sock


def send(sock, frames):
    accepted, refused = [], 0
    for seq, data in frames:
        try:
            sock.send(data)
            accepted.append(seq)
        except OSError as e:
            if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                raise
            refused += 1
    return accepted, refused


def drain(fd):
    got = []
    while True:
        try:
            data = os.read(fd, 2048)
        except BlockingIOError:
            return got
        got.append(seq_of(data))


def tx_dropped(name):
    with open(f"/sys/class/net/{name}/statistics/tx_dropped") as f:
        return int(f.read())


def task_state(tid):
    with open(f"/proc/self/task/{tid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


class Blocking(threading.Thread):
    """One blocking call in a thread: its result, its error, or still blocked."""

    def __init__(self, call):
        super().__init__(daemon=True)
        self.call, self.result, self.error, self.tid = call, None, None, None

    def run(self):
        self.tid = threading.get_native_id()
        try:
            self.result = self.call()
        except OSError as e:
            self.error = errno.errorcode.get(e.errno, str(e.errno))

    def blocked(self, settle):
        """Still inside the call and asleep after ``settle`` seconds."""
        self.start()
        while self.tid is None:
            time.sleep(0.001)
        time.sleep(settle)
        return self.is_alive() and task_state(self.tid) == "S"

    def outcome(self, limit):
        self.join(limit)
        return {"hung": True} if self.is_alive() else {"hung": False, "result": self.result, "error": self.error}


def reader(fd):
    return Blocking(lambda: seq_of(os.read(fd, 2048)))


class Interrupted(Exception):
    pass


def reads(name):
    """Every reader path of one tap with one ring."""
    fd = open_tap(name)
    up(name, 64)
    sock = sender(name)
    out = {}
    t0 = time.monotonic()
    send(sock, [(0, frame(0))])
    out["first"] = drain(fd)
    # one send and read round trip: the unit the waits below are scaled by
    unit = max(time.monotonic() - t0, 0.001)
    limit = max(5.0, 2000 * unit)
    settle = max(0.2, 50 * unit)
    out["limit_s"] = limit
    try:
        os.read(fd, 2048)
        out["empty_nonblocking"] = "data"
    except OSError as e:
        out["empty_nonblocking"] = errno.errorcode.get(e.errno, str(e.errno))
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLOUT)
    out["poll_empty"] = dict(poller.poll(0)).get(fd, 0)
    send(sock, [(1, frame(1))])
    out["poll_queued"] = dict(poller.poll(0)).get(fd, 0)
    out["zero_length_read"] = len(os.read(fd, 0))
    out["after_zero_length"] = drain(fd)
    out["poll_drained"] = dict(poller.poll(0)).get(fd, 0)

    os.set_blocking(fd, True)
    blocked = reader(fd)
    out["reader_blocked"] = blocked.blocked(settle)
    send(sock, [(2, frame(2))])
    out["woken_by_frame"] = blocked.outcome(limit)

    # a signal: the main thread is the reader (Python runs handlers there);
    # a watchdog thread sends a frame if the signal did not end the read
    def raise_interrupted(signum, _frame):
        raise Interrupted()
    signal.signal(signal.SIGALRM, raise_interrupted)
    rescue = threading.Timer(limit, lambda: send(sock, [(3, frame(3))]))
    rescue.start()
    signal.setitimer(signal.ITIMER_REAL, settle)
    try:
        data = os.read(fd, 2048)
        out["signal"] = {"interrupted": False, "seq": seq_of(data)}
    except Interrupted:
        out["signal"] = {"interrupted": True}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        rescue.cancel()

    # a down tap is not writable; a poller waiting for that is woken at the up
    subprocess.run(["ip", "link", "set", name, "down"], check=True)
    out["poll_down"] = dict(poller.poll(0)).get(fd, 0)
    # the poll's own timeout is twice the wait: poll re-reads the mask when it
    # times out, so only a wakeup ends it within the wait
    waiting = Blocking(lambda: dict(poller.poll(int(2 * limit * 1000))).get(fd, 0))
    out["poller_blocked_while_down"] = waiting.blocked(settle)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    out["woken_by_up"] = waiting.outcome(limit)

    blocked = reader(fd)
    out["reader_blocked_at_unregister"] = blocked.blocked(settle)
    subprocess.run(["ip", "link", "del", name], check=True)
    out["woken_by_unregister"] = blocked.outcome(limit)
    try:
        os.read(fd, 2048)
        out["read_after_unregister"] = "data"
    except OSError as e:
        out["read_after_unregister"] = errno.errorcode.get(e.errno, str(e.errno))
    out["poll_after_unregister"] = dict(poller.poll(0)).get(fd, 0)
    return out


def mq(name):
    """Two queues of one multiqueue tap."""
    q = [open_tap(name, IFF_MULTI_QUEUE), open_tap(name, IFF_MULTI_QUEUE)]
    up(name, 64)
    sock = sender(name)
    out = {}
    # 64 flows of 4 frames each, into two rings of 64
    frames = [(flow * 4 + i, frame(flow * 4 + i, flow)) for i in range(4) for flow in range(64)]
    before = tx_dropped(name)
    accepted, refused = send(sock, frames)
    out["spread"] = {"accepted": accepted, "refused": refused, "tx_dropped": tx_dropped(name) - before,
                     "queues": [drain(q[0]), drain(q[1])]}

    # frames left in a queue that is detached are dropped with it
    send(sock, [(1000 + flow, frame(1000 + flow, flow)) for flow in range(64)])
    fcntl.ioctl(q[1], TUNSETQUEUE, struct.pack("16sH", b"", IFF_DETACH_QUEUE))
    out["detached_read"] = drain_or_error(q[1])
    out["kept_by_attached"] = drain(q[0])
    # the resize reaches the detached queue's ring too
    subprocess.run(["ip", "link", "set", name, "txqueuelen", "32"], check=True)
    before = tx_dropped(name)
    accepted, refused = send(sock, [(2000 + i, frame(2000 + i, i)) for i in range(100)])
    out["one_queue"] = {"accepted": accepted, "refused": refused, "tx_dropped": tx_dropped(name) - before,
                        "queue0": drain(q[0])}
    fcntl.ioctl(q[1], TUNSETQUEUE, struct.pack("16sH", b"", IFF_ATTACH_QUEUE))
    out["reattached_empty"] = drain(q[1])
    fcntl.ioctl(q[0], TUNSETQUEUE, struct.pack("16sH", b"", IFF_DETACH_QUEUE))
    before = tx_dropped(name)
    accepted, refused = send(sock, [(3000 + i, frame(3000 + i, i)) for i in range(100)])
    out["other_queue"] = {"accepted": accepted, "refused": refused, "tx_dropped": tx_dropped(name) - before,
                          "queue1": drain(q[1])}
    return out


def close_full(name, cycles, frames):
    """Rings full of frames, closed unread: what tun frees at the close."""
    queued = 0
    for _ in range(cycles):
        fd = open_tap(name)
        up(name, frames)
        sock = sender(name)
        accepted, _ = send(sock, [(i, frame(i, i % 64)) for i in range(frames)])
        queued += len(accepted)
        sock.close()
        os.close(fd)
    return {"queued": queued}


def drain_or_error(fd):
    try:
        return drain(fd)
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def main():
    what, name = sys.argv[1], sys.argv[2]
    if what == "close":
        out = close_full(name, int(sys.argv[3]), int(sys.argv[4]))
    else:
        out = reads(name) if what == "reads" else mq(name)
    print(json.dumps(out), flush=True)
    os._exit(0)  # a reader a broken kernel never woke must not keep us here


if __name__ == "__main__":
    main()
