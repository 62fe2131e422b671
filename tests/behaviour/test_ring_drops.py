"""ring_drops: frames a full ring refuses are counted exactly (seed 004:
tun's tx ring sized by tx_queue_len), on the host's tap, in the guest
kernel's own tun, and at a full backlog."""
import json
import time
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from harness.measure.backlog import BACKLOG_NAPI
from harness.measure.observe import host_link, snapshot
from harness.measure.rps import CpuHog, SteeredVeth
from harness.measure.traffic import send_frames
from harness.measure.backlog import max_backlog
from harness.vocab import counting, delta

TUN_RING = Path(__file__).parent / "guest" / "tun_ring.py"


def set_tx_queue_len(tap, qlen):
    with IPRoute() as ipr:
        ipr.link("set", ifname=tap, txqlen=qlen)


def wait_rx(guest, before, want, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = delta(before, snapshot(guest)).link("eth0").rx.packets
        if got >= want:
            break
        time.sleep(0.2)
    time.sleep(0.5)  # anything beyond what was accepted would show up now
    return delta(before, snapshot(guest)).link("eth0").rx.packets


@pytest.mark.parametrize("tx_queue_len", [256, 100])
def test_ring_drops_host_tap_with_guest_paused(lab, tx_queue_len):
    """Guest paused: the tap's ring takes at most tx_queue_len frames, the rest
    are refused and counted in tx_dropped; resumed, the guest gets exactly
    the accepted ones.

    ptr_ring's consumer zeroes the slots it consumed in batches of 16, so a
    ring that was just drained can hold up to 15 frames fewer than its size."""
    single = lab("single-q")
    g1, tap = single.guest("g1"), single.taps["t0"]
    set_tx_queue_len(tap, tx_queue_len)
    mac = g1.check("cat /sys/class/net/eth0/address").stdout.strip()
    frame = bytes(Ether(dst=mac, src="02:00:00:00:00:01", type=0x88b5) / Raw(b"\0" * 46))
    n = 3 * tx_queue_len
    before = snapshot(g1)
    tap_before = host_link(tap)
    g1.pause()
    try:
        sent = send_frames(tap, [frame], n)
        tap_after = host_link(tap)
    finally:
        g1.resume()
    assert sent.accepted + sent.refused == n
    assert tx_queue_len - 16 < sent.accepted <= tx_queue_len, sent.errors
    assert set(sent.errors) == {"ENOBUFS"}
    assert (tap_after - tap_before).tx.dropped == sent.refused
    assert wait_rx(g1, before, sent.accepted) == sent.accepted


@pytest.mark.needs("CONFIG_TUN")
def test_ring_drops_guest_tun_exact_and_in_order(guest):
    """The guest kernel's own tun: a reader that does not read gets exactly
    tx_queue_len frames queued, the rest refused and counted; reading back
    returns every accepted frame, in order."""
    r = json.loads(guest.check(f"python3 {TUN_RING} gtap0 64 200").stdout)
    assert len(r["accepted"]) == 64 and r["refused"] == 136
    assert r["tx_dropped"] == r["refused"]
    assert r["read"] == r["accepted"] == list(range(64))


@pytest.mark.needs("CONFIG_TUN")
@pytest.mark.parametrize("resize_to", [32, 128])
def test_ring_drops_guest_tun_resized_while_full(guest, resize_to):
    """Resizing a full ring: growing keeps every frame; shrinking keeps the
    oldest resize_to frames, in order (tun frees the rest at the resize)."""
    r = json.loads(guest.check(f"python3 {TUN_RING} gtap1 64 100 {resize_to}").stdout)
    assert r["accepted"] == list(range(64)) and r["tx_dropped"] == r["refused"] == 36
    assert r["read"] == list(range(min(64, resize_to)))


@pytest.mark.needs(SteeredVeth, BACKLOG_NAPI)
@pytest.mark.guest(vcpus=2, cmdline="thread_backlog_napi")
def test_ring_drops_backlog_overflow_counted_exactly(guest, defer):
    """A small netdev_max_backlog, RPS to CPU 1 whose backlog thread is kept
    off the CPU by a SCHED_FIFO hog: the backlog overflows; softnet_stat's
    dropped on CPU 1 equals the device's rx_dropped and pktgen's errors (veth
    returns NET_XMIT_DROP), and every packet pktgen got out is processed."""
    pair = SteeredVeth(guest, target_cpu=1, sender_cpu=0).create()
    defer(pair.delete)
    with max_backlog(guest, 100), counting(guest) as d:
        hog = CpuHog(guest, 1, 4).start()
        result = pair.send(50_000)
        hog.wait(30)
        time.sleep(0.5)
    cpu1 = d.softnet[1]
    assert cpu1.dropped > 0, "the backlog never overflowed"
    assert cpu1.dropped == d.link(pair.rx).rx.dropped
    assert cpu1.dropped == result.errors
    assert cpu1.processed == result.sent == 50_000
