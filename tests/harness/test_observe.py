"""Observations on a live guest: one full snapshot, and exact accounting of
frames sent from the host into a guest NIC (the parsers: tests/unit)."""
import time

from scapy.layers.l2 import Ether
from scapy.packet import Raw

from harness.measure.observe import host_link, snapshot
from harness.measure.traffic import send_frames
from harness.vocab import delta


def test_guest_snapshot_reads_every_part(lab):
    """One snapshot of a live 6.12 guest: softnet (15 columns), links,
    per-queue ethtool counters, the mq qdisc with one child per queue, one
    ksoftirqd per CPU pinned to it, sysctls and the NIC's interrupts."""
    g1 = lab("single-mq").guest("g1")
    s = snapshot(g1)
    ncpu = int(g1.check("nproc").stdout)
    assert sorted(s.softnet) == list(range(ncpu)) and s.softnet[0].backlog_len >= 0  # input_qlen: >= 6.6
    assert "eth0" in s.links and s.nic("eth0").queues == 2
    assert s.qdisc("eth0").kind == "mq" and len(s.children("eth0")) == 2
    assert [(t.name, t.cpus) for t in s.threads("ksoftirqd/*")] == [(f"ksoftirqd/{n}", {n}) for n in range(ncpu)]
    assert s.sysctl("net.core.netdev_max_backlog") == g1.check("sysctl -n net.core.netdev_max_backlog").stdout.strip()
    assert len(s.interrupts("-input.")) == ncpu


def test_frames_from_the_host_are_counted_exactly_in_the_guest(lab):
    """Send N frames into the guest's NIC from the host tap: the guest's rx
    counter grows by exactly N, the tap's tx counter too."""
    single = lab("single-mq")
    g1, tap = single.guest("g1"), single.taps["t0"]
    mac = g1.check("cat /sys/class/net/eth0/address").stdout.strip()
    frame = bytes(Ether(dst=mac, src="02:00:00:00:00:01", type=0x88b5) / Raw(b"\0" * 46))
    n = 500  # under the tap's ring (tx_queue_len 1000): none may be dropped
    tap_before = host_link(tap)
    before = snapshot(g1)
    sent = send_frames(tap, [frame], n)
    assert (sent.accepted, sent.refused) == (n, 0), sent.errors
    for _ in range(100):  # the guest reads its queue at TCG speed
        d = delta(before, snapshot(g1))
        if d.link("eth0").rx.packets >= n:
            break
        time.sleep(0.1)
    assert d.link("eth0").rx.packets == n
    assert (host_link(tap) - tap_before).tx.packets == n
