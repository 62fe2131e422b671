"""Traffic from the host: frames built once (scapy), sent through a raw
packet socket so that the sender is not the bottleneck.

    sent = send_frames("nh1a2bt0", [bytes(Ether(dst=mac)/...)], count=10_000)
    sent.accepted, sent.refused, sent.errors   # ENOBUFS & co. are counts
"""
from __future__ import annotations

import collections
import dataclasses
import errno
import socket

from .hostnet import in_netns_call


@dataclasses.dataclass
class SendResult:
    accepted: int
    refused: int
    errors: dict  # errno name -> count


def send_frames(ifname: str, frames: list[bytes], count: int, netns: str | None = None) -> SendResult:
    """Send ``count`` frames out of ``ifname`` (cycling through ``frames``).

    Non-blocking: a frame the kernel refuses (ENOBUFS when a queue is full,
    ENETDOWN, ...) is counted, not raised."""
    if not frames:
        raise ValueError("send_frames: no frames")
    if netns is not None:
        return in_netns_call(netns, lambda: send_frames(ifname, frames, count))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sock.bind((ifname, 0))
        sock.setblocking(False)
        send = sock.send
        accepted, errors = 0, collections.Counter()
        n = len(frames)
        for i in range(count):
            try:
                send(frames[i % n])
                accepted += 1
            except OSError as e:
                errors[errno.errorcode.get(e.errno, str(e.errno))] += 1
        return SendResult(accepted, count - accepted, dict(errors))
    finally:
        sock.close()
