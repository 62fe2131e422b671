"""napi_cache (seed 003): bulk free and bulk alloc of skbs in NAPI context,
the per-CPU NAPI skb cache (napi_skb_cache_get/put, napi_consume_skb).

The guest's virtio NIC drives both halves: a received frame's skb comes
from the cache (napi_build_skb, refilled 16 at a time by a bulk alloc), a
transmitted one goes back to it at TX completion (napi_consume_skb from
virtio-net's NAPI poll; half the cache is bulk freed when it is full).
Many thousand of each, far more than the cache holds: every frame is
counted where it should be, and once traffic stopped and the caches were
shrunk the skb caches hold no more objects than before, beyond the slack
the slab layout and the NAPI cache allow (harness.measure.slab)."""
import json
import time
from pathlib import Path

import pytest
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from harness.lab.hosts import Container
from harness.lab.topo import Topo
from harness.measure.observe import host_link, snapshot
from harness.measure.pktgen import Pktgen
from harness.measure.slab import NAPI_SKB_CACHE_SIZE, drained_slabs, leaks
from harness.measure.tracing import count, trace_events
from harness.measure.traffic import send_frames, send_from, tcp_stream
from harness.vocab import delta, wait_until

TUN_NAPI_GRO = Path(__file__).parent / "guest" / "tun_napi_gro.py"
FRAMES = 20_000
RATE_PPS = 4_000        # what a TCG guest takes without its tap refusing most of them
TURNOVER = 20           # the least: frames through each CPU's cache, in cache sizes


def no_leak(guest, baseline, what):
    beyond = leaks(guest, baseline)
    assert not beyond, f"after {what}, drained: {'; '.join(beyond)}"


@pytest.mark.needs("CONFIG_SLUB")
def test_napi_cache_received_frames_leave_no_skb_behind(lab):
    single = lab("single-q")
    g1, tap = single.guest("g1"), single.taps["t0"]
    mac = g1.check("cat /sys/class/net/eth0/address").stdout.strip()
    frame = bytes(Ether(dst=mac, src="02:00:00:00:00:01", type=0x88b5) / Raw(b"\0" * 46))
    baseline = drained_slabs(g1)
    before, tap_before = snapshot(g1), host_link(tap)
    t0 = time.monotonic()
    sent = send_frames(tap, [frame], FRAMES, rate_pps=RATE_PPS)
    sending_s = time.monotonic() - t0
    # the tap also carries the host's own few frames (IPv6 link-local): the
    # guest must count every frame the tap handed over, ours among them
    handed = (host_link(tap) - tap_before).tx.packets
    received = lambda: delta(before, snapshot(g1)).link("eth0").rx.packets  # noqa: E731
    wait_until(lambda: received() >= handed, timeout=sending_s)
    assert sent.accepted + sent.refused == FRAMES
    # the state: many times more frames than the cache holds went through it
    assert sent.accepted > TURNOVER * NAPI_SKB_CACHE_SIZE, f"only {sent.accepted} frames got into the guest"
    assert handed >= sent.accepted
    assert received() == handed, f"the tap handed over {handed} frames, the guest counted {received()}"
    no_leak(g1, baseline, f"{received} frames received")


@pytest.mark.needs(Pktgen, "CONFIG_SLUB")
def test_napi_cache_transmit_completions_leave_no_skb_behind(lab):
    guest = lab("single-q").guest("g1")
    baseline = drained_slabs(guest)
    before = snapshot(guest)
    result = Pktgen(guest).run("eth0", count=FRAMES, threads=1, dst_mac="02:00:00:00:00:09")
    sent = delta(before, snapshot(guest)).link("eth0").tx.packets
    assert result.sent == FRAMES and result.errors == 0, result
    assert sent == FRAMES, f"pktgen sent {FRAMES}, eth0 counted {sent}"
    no_leak(guest, baseline, f"{FRAMES} frames transmitted and completed")


NS = "ncsrv"
GRO_PAIR = (f"ip netns add {NS} && ip link add ncc type veth peer name ncs netns {NS} && "
            "ip addr add 10.77.8.1/24 dev ncc && ethtool -K ncc tso off gso off >/dev/null && ip link set ncc up && "
            f"ip -n {NS} addr add 10.77.8.2/24 dev ncs && ip netns exec {NS} ethtool -K ncs gro on >/dev/null && "
            f"ip -n {NS} link set ncs up && ip -n {NS} link set lo up")


@pytest.mark.needs("CONFIG_VETH", "CONFIG_NET_NS", "CONFIG_FTRACE", "CONFIG_SLUB")
@pytest.mark.guest(vcpus=2)
def test_napi_cache_gro_merged_segments_leave_no_skb_behind(guest, defer):
    """TCP over a veth whose receiving end does GRO (its NAPI on), segments
    of one MSS from a sender without TSO/GSO: GRO merges them, and each
    merged segment's skb goes back to the NAPI cache (a stolen head:
    napi_skb_free_stolen_head; else __napi_kfree_skb).  None is left behind."""
    defer(guest.run, f"ip netns del {NS} 2>/dev/null; ip link del ncc 2>/dev/null; true")
    guest.check(GRO_PAIR)
    baseline = drained_slabs(guest)
    with trace_events(guest, ["net:netif_receive_skb"]) as trace:
        stream = tcp_stream(Container(guest, NS), guest, "10.77.8.2", seconds=3)
    merged = [e for e in trace.events if e.field("dev") == "ncs" and int(e.field("len") or 0) > 1500]
    # the state: GRO merged segments, many times what the cache holds
    assert len(merged) > TURNOVER * NAPI_SKB_CACHE_SIZE, f"{len(merged)} GRO-merged skbs in {stream}"
    no_leak(guest, baseline, f"{len(merged)} GRO-merged skbs")



@pytest.mark.needs("CONFIG_TUN", "CONFIG_NET_NS", "CONFIG_SLUB")
def test_napi_cache_gro_stolen_heads_leave_no_skb_behind(guest):
    """Segments whose heads are page fragments (tun's build_skb, through
    tun's own NAPI): GRO merging them steals each head into the merged
    packet, and the emptied skb goes to the NAPI cache
    (napi_skb_free_stolen_head).  None is left behind."""
    baseline = drained_slabs(guest)
    r = json.loads(guest.check(f"python3 {TUN_NAPI_GRO} gtg0 {FRAMES}").stdout)
    delivered = r["ip_in_receives"]
    # the state: every segment went in, GRO merged at least 3 of 4 into others
    assert r["written"] == r["rx_packets"] == FRAMES, r
    assert 0 < delivered <= FRAMES // 4, f"GRO delivered {delivered} packets for {FRAMES} segments"
    no_leak(guest, baseline, f"{FRAMES - delivered} segments merged by GRO")


def rtl8139_lab():
    """One guest whose NIC is an emulated rtl8139 (8139cp), a host
    namespace on its tap."""
    t = Topo("rtl8139")
    t.guest("g1", vcpus=2).nic("t0", model="rtl8139", address="10.77.9.2/24")
    t.host_namespace("peer").link("p0", "tap:t0", "10.77.9.1/24")
    return t


PLAIN = 4000  # frames of our own through the completion queue, and at least as many TCP skbs


@pytest.mark.needs("CONFIG_8139CP", "CONFIG_FTRACE", "CONFIG_SLUB")
def test_napi_cache_hard_irq_completions_net_tx_action_frees_leave_no_skb_behind(lab):
    """A NIC that frees what it sent in hard IRQ (8139cp's TX interrupt:
    dev_consume_skb_irq) puts the skbs on its CPU's completion queue, and
    net_tx_action frees them: plain ones through the NAPI cache
    (__napi_kfree_skb), TCP's clones through __kfree_skb.  Raw frames and
    a TCP stream, then none is left behind."""
    rtl = lab(rtl8139_lab())
    g1, peer = rtl.guest("g1"), rtl.host_ns("peer")
    baseline = drained_slabs(g1)
    plain, drain_limit = 0, None
    queued = lambda: snapshot(g1).qdisc("eth0").qlen  # noqa: E731
    with trace_events(g1, ["skb:consume_skb"], buffer_kb=8192) as trace:
        for _ in range(4 * PLAIN // 500):  # rounds: a chip that takes none still ends
            if plain >= PLAIN:
                break
            sent, _ = send_from(g1, "eth0", "02:00:00:00:00:09", 500)
            plain += sent
            # the first drain is the chip's measured speed; the later ones get ten times it
            waited = wait_until(lambda: queued() == 0, timeout=drain_limit or 600)
            assert queued() == 0, f"eth0's qdisc still holds {queued()} frames after {waited:.1f} s"
            drain_limit = drain_limit or max(10 * waited, 5.0)
        # TCP (TSO: the chip takes 64 KB skbs) until as many skbs went out
        before, tcp = snapshot(g1), 0
        for _ in range(10):  # 3 s streams
            if tcp >= PLAIN:
                break
            tcp_stream(peer, g1, "10.77.9.1", seconds=3)
            tcp = delta(before, snapshot(g1)).link("eth0").tx.packets
    completed = count(trace.events, "consume_skb", where="net_tx_action")
    # the state: enough of each, and every one went through the completion queue
    assert plain >= PLAIN and tcp >= PLAIN, f"the chip took {plain} frames and {tcp} TCP skbs"
    assert trace.lost == 0, f"{trace.lost} trace events lost"
    assert completed >= plain + tcp, f"net_tx_action freed {completed} skbs; {plain} frames and {tcp} TCP skbs sent"
    no_leak(g1, baseline, f"{completed} skbs freed from the completion queue")
