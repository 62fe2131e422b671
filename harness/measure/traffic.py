"""Traffic: frames from the host or a guest, TCP streams, HTTP load, captures.

    sent = send_frames("nh1a2bt0", [bytes(Ether(dst=mac)/...)], count=10_000)
    sent.accepted, sent.refused, sent.errors   # ENOBUFS & co. are counts
    sent, refused = send_from(guest, "eth0", mac, 10_000)   # inside a guest
    tcp_stream(server, client, "10.77.1.2", seconds=3).bits_per_second
    http_load(client, "http://10.77.2.1/", connections=64).requests_per_second

Frames are built once (scapy) and sent through a raw packet socket so that
the sender is not the bottleneck.  Streams and requests run real tools
(iperf3, wrk) between any two endpoints with spawn(): guests, containers,
host namespaces.  Everything is bounded in count or time.  In-guest packet
generation is harness.measure.pktgen.
"""
from __future__ import annotations

import collections
import dataclasses
import errno
import json
import re
import socket
import time
from typing import Any

from ..netns import in_netns_call
from ..util import HarnessError


class TrafficError(HarnessError):
    pass


@dataclasses.dataclass
class SendResult:
    accepted: int
    refused: int
    errors: dict  # errno name -> count


GUEST_AGENT = "/run/harness/agent"  # in every guest (stage 1 copies it there)


def send_from(where, dev: str, dst_mac: str, count: int, *, cpu: int | None = None,
              timeout: float = 120.0) -> tuple[int, int]:
    """(sent, refused): ``count`` copies of one UDP frame to ``dst_mac`` out
    of ``dev`` in a guest or a container in one (the agent's --send, a
    packet socket, on ``cpu`` when given).  Returns as soon as the kernel
    took or refused each: for filling a ring or a backlog whose consumer
    is held, where pktgen would wait for its last packet."""
    pin = f"taskset -c {int(cpu)} " if cpu is not None else ""
    out = where.check(f"{pin}{GUEST_AGENT} --send {dev} {dst_mac} {int(count)}", timeout=timeout).stdout
    m = re.fullmatch(r"sent (\d+) refused (\d+)\n", out)
    if not m:
        raise TrafficError(f"{where.name}: the agent's --send printed {out!r}; expected 'sent N refused M'")
    return int(m.group(1)), int(m.group(2))


def send_frames(ifname: str, frames: list[bytes], count: int, netns: str | None = None,
                rate_pps: float | None = None) -> SendResult:
    """Send ``count`` frames out of ``ifname`` (cycling through ``frames``),
    as fast as possible or paced at ``rate_pps`` (a flood at a set rate).

    Non-blocking: a frame the kernel refuses (ENOBUFS when a queue is full,
    ENETDOWN, ...) is counted, not raised."""
    if not frames:
        raise ValueError("send_frames: no frames")
    if netns is not None:
        return in_netns_call(netns, lambda: send_frames(ifname, frames, count, rate_pps=rate_pps))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sock.bind((ifname, 0))
        sock.setblocking(False)
        send = sock.send
        accepted, errors = 0, collections.Counter[str]()
        n = len(frames)
        # paced: 1 ms worth of frames at a time; unpaced: one batch of all
        batch = max(1, int(rate_pps / 1000)) if rate_pps else count
        start = time.monotonic()
        for first in range(0, count, batch):
            if rate_pps and (ahead := start + first / rate_pps - time.monotonic()) > 0:
                time.sleep(ahead)
            for i in range(first, min(first + batch, count)):
                try:
                    send(frames[i % n])
                    accepted += 1
                except OSError as e:
                    errors[errno.errorcode.get(e.errno or 0, str(e.errno))] += 1
        return SendResult(accepted, count - accepted, dict(errors))
    finally:
        sock.close()


# --- streams and requests between endpoints (guests, containers, host namespaces)

@dataclasses.dataclass(frozen=True)
class StreamResult:
    """An iperf3 run: what the receiver got, from iperf3's JSON."""
    bits_per_second: float
    bytes: int
    seconds: float
    retransmits: int
    report: dict  # iperf3's whole JSON report


def parse_iperf3(text: str) -> StreamResult:
    report = json.loads(text)
    if "error" in report:
        raise TrafficError(f"iperf3: {report['error']}")
    end = report["end"]
    received = end.get("sum_received") or end["sum"]
    return StreamResult(received["bits_per_second"], received["bytes"], received["seconds"],
                        end.get("sum_sent", {}).get("retransmits", 0), report)


def tcp_stream(server, client, address: str, *, seconds: float = 3, parallel: int = 1,
               port: int = 5201, extra: str = "", timeout: float | None = None) -> StreamResult:
    """An iperf3 TCP stream from ``client`` to ``server`` (listening on
    ``address``); both are endpoints with spawn().  The server serves one
    test and exits; the client retries while the server starts."""
    limit = timeout or seconds * 3 + 30
    server_job = server.spawn(f"exec iperf3 -s -1 -p {port} -B {address}")
    try:
        deadline = time.monotonic() + 15
        while True:
            result = client.spawn(f"iperf3 -c {address} -p {port} -t {seconds} -P {parallel} -J {extra}").wait(limit)
            # iperf3 3.12 exits 0 even when it could not connect: read its JSON
            refused = "Connection refused" in result.stdout
            if not refused or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if result.rc != 0 or '"error"' in result.stdout:
            raise TrafficError(f"iperf3 client on {client!r} failed (rc {result.rc}): "
                               f"{(result.stdout + result.stderr)[-1500:]}")
        server_job.wait(30)
        return parse_iperf3(result.stdout)
    finally:
        if server_job.running:
            server_job.kill()


@dataclasses.dataclass(frozen=True)
class HttpResult:
    """A wrk run."""
    requests: int
    seconds: float
    requests_per_second: float
    socket_errors: dict  # connect/read/write/timeout -> count
    non_2xx_3xx: int

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx_3xx


_WRK_REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(m?s)")
_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(text: str) -> HttpResult:
    requests, rps = _WRK_REQUESTS.search(text), _WRK_RPS.search(text)
    if not (requests and rps):
        raise TrafficError(f"wrk printed no result: {text[-1500:]!r}")
    seconds = float(requests.group(2)) / (1000 if requests.group(3) == "ms" else 1)
    errors = _WRK_ERRORS.search(text)
    non2xx = _WRK_NON2XX.search(text)
    return HttpResult(int(requests.group(1)), seconds, float(rps.group(1)),
                      dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=False))
                      if errors else {"connect": 0, "read": 0, "write": 0, "timeout": 0},
                      int(non2xx.group(1)) if non2xx else 0)


def http_load(client, url: str, *, connections: int = 16, seconds: float = 3, threads: int = 1,
              timeout: float | None = None) -> HttpResult:
    """HTTP requests from ``client`` with wrk (keep-alive connections, the
    load generator of seed 000's table)."""
    if connections < threads:
        raise ValueError(f"http_load: connections ({connections}) must be >= threads ({threads})")
    result = client.spawn(f"wrk -t{threads} -c{connections} -d{seconds}s --timeout 5s {url}").wait(
        timeout or seconds * 3 + 30)
    if result.rc != 0:
        raise TrafficError(f"wrk on {client!r} failed (rc {result.rc}): {(result.stdout + result.stderr)[-1500:]}")
    return parse_wrk(result.stdout)


# --- capture -------------------------------------------------------------------

class Capture:
    """Frames seen on a host interface (a scapy sniffer), optionally written
    to a pcap file when the capture stops.

        with Capture("nh1a2bt0", pcap=log_dir / "t0.pcap") as cap:
            send_frames(...)
        cap.packets
    """

    def __init__(self, ifname: str, *, netns: str | None = None, pcap=None, bpf: str | None = None):
        self.ifname, self.netns, self.pcap, self.bpf = ifname, netns, pcap, bpf
        self.packets: list = []
        self._sniffer: Any = None  # scapy's AsyncSniffer while capturing

    def __enter__(self):
        from scapy.config import conf
        from scapy.sendrecv import AsyncSniffer

        def listen() -> Any:
            return conf.L2listen(iface=self.ifname, filter=self.bpf)
        sock = in_netns_call(self.netns, listen) if self.netns else listen()
        self._sniffer = AsyncSniffer(opened_socket=sock, store=True)
        self._sniffer.start()
        time.sleep(0.05)  # the sniffer thread is reading before traffic starts
        return self

    def __exit__(self, *exc):
        time.sleep(0.1)  # frames in flight reach the socket
        self.packets = list(self._sniffer.stop() or [])
        if self.pcap is not None:
            from scapy.utils import wrpcap
            wrpcap(str(self.pcap), self.packets)
