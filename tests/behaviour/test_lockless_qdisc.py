"""lockless_qdisc (seed 000): pktgen in queue_xmit mode, one thread per
vCPU, through mq with pfifo_fast children on the guest's multiqueue virtio
NIC, and through pfifo_fast on a single-queue device.  Afterwards no packet
is stuck in any qdisc, and the qdisc's counters agree with pktgen's exactly:
what pktgen got in (sent) left the qdisc, what it could not (errors) the
qdisc dropped."""
import json

import pytest

from harness.kernel.needs import Version
from harness.lab.topo import Topo
from harness.vm.console import CommandTimeout
from harness.measure.observe import snapshot
from harness.measure.pktgen import Pktgen
from harness.measure.slab import drained_slabs, leaks
from harness.measure.traffic import GUEST_AGENT, send_from
from harness.vocab import delta, wait_until

COUNT = 10_000  # per thread
pytestmark = pytest.mark.needs(Pktgen, "CONFIG_NET_SCHED")


def run_and_account(where, dev, threads, leaves):
    before = snapshot(where)
    result = Pktgen(where).run(dev, count=COUNT, threads=threads, xmit_mode="queue_xmit",
                               dst_mac="02:00:00:00:00:09")
    after = snapshot(where)
    d = delta(before, after)
    assert result.sent == COUNT * threads
    for leaf in leaves:
        q = after.qdisc(dev, leaf)
        assert (q.kind, q.backlog, q.qlen) == ("pfifo_fast", 0, 0), f"stuck packets in {q}"
    sent_by_qdisc = sum(d.qdisc(dev, leaf).packets for leaf in leaves)
    dropped_by_qdisc = sum(d.qdisc(dev, leaf).drops for leaf in leaves)
    assert sent_by_qdisc + dropped_by_qdisc == result.sent + result.errors
    assert dropped_by_qdisc == result.errors
    assert sent_by_qdisc == result.sent
    # mq's own counters are its children's summed at each dump (mq_dump)
    root = d.qdisc(dev)
    assert (root.packets, root.drops) == (sent_by_qdisc, dropped_by_qdisc), f"root {root}"
    assert (after.qdisc(dev).backlog, after.qdisc(dev).qlen) == (0, 0), f"root {after.qdisc(dev)}"
    # what left the qdisc the driver sent or (veth: a full peer backlog) dropped
    assert d.link(dev).tx.packets + d.link(dev).tx.dropped == sent_by_qdisc
    return result


def test_lockless_qdisc_mq_pfifo_fast_multiqueue_virtio(lab, defer):
    g1 = lab("single-mq").guest("g1")
    ncpu = int(g1.check("nproc").stdout)
    queues = snapshot(g1).nic("eth0").queues
    g1.check("tc qdisc replace dev eth0 root handle 1: mq && "
             + " && ".join(f"tc qdisc replace dev eth0 parent 1:{q + 1:x} pfifo_fast" for q in range(queues)))
    defer(g1.check, "tc qdisc del dev eth0 root")
    result = run_and_account(g1, "eth0", ncpu, [f"1:{q + 1:x}" for q in range(queues)])
    assert len(result.threads) == ncpu


@pytest.mark.needs("CONFIG_VETH")
def test_lockless_qdisc_pfifo_fast_single_queue(guest, defer):
    ncpu = int(guest.check("nproc").stdout)
    guest.check("ip link add lq0 type veth peer name lq1 && ip link set lq0 up && ip link set lq1 up && "
                "tc qdisc replace dev lq0 root handle 1: pfifo_fast")
    defer(guest.run, "ip link del lq0")
    run_and_account(guest, "lq0", ncpu, [None])


def quota_lab():
    """One vCPU with one virtio NIC on a tap, a namespace on the tap's other
    end; no second CPU, so no contention marks a qdisc MISSED."""
    t = Topo("lq-quota")
    t.guest("g1", vcpus=1).nic("t0", address="10.77.8.2/24")
    t.host_namespace("peer").link("p0", "tap:t0", "10.77.8.1/24")
    return t


QUOTA_FRAMES, FRAME = 2000, 60  # the agent's frames are 60 bytes
# pfifo_fast's bands hold txqueuelen frames each: a short one fills as soon as
# the sender is a few frames ahead of the NIC, however fast QEMU drains it
QUOTA_QUEUE, QUOTA_BURSTS = 16, 5
BQL = "/sys/class/net/eth0/queues/tx-0/byte_queue_limits"


@pytest.mark.needs("CONFIG_BQL", "CONFIG_VIRTIO_NET", Version((6, 10), "virtio-net's byte queue limits"))
def test_lockless_qdisc_a_run_that_ends_at_its_quota_sends_the_rest_later(lab, defer):
    """__qdisc_run stops at its quota (dev_tx_weight) and marks a lockless
    qdisc MISSED, so that qdisc_run_end schedules the rest.  A quota of one
    frame (net.core.dev_weight=1) and a byte queue limit of one frame
    (virtio-net's BQL with napi_tx, fixed): a run that finds nothing in
    flight (the driver reaped it) sends one frame, which leaves the queue
    awake (exactly at its limit) and no byte allowance for a bulk, and
    stops at its quota.  On one CPU nothing but that note sends the rest
    once the sender is done: a completion reschedules only a queue the
    limit stopped.  Frames from one CPU until the qdisc was full, then it
    empties."""
    g1 = lab(quota_lab()).guest("g1")
    weight = g1.check("sysctl -n net.core.dev_weight").stdout.strip()
    defer(g1.check, f"sysctl -qw net.core.dev_weight={weight}")
    # no frames but ours: no IPv6, no ARP replies
    g1.check("echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6 && ip link set dev eth0 arp off && "
             f"ip link set dev eth0 txqueuelen {QUOTA_QUEUE} && tc qdisc replace dev eth0 root handle 1: pfifo_fast && "
             f"echo {FRAME} > {BQL}/limit_max && echo {FRAME} > {BQL}/limit_min")
    assert g1.check(f"cat {BQL}/limit_min {BQL}/limit_max").stdout.split() == [str(FRAME)] * 2
    assert g1.check("sysctl -n net.core.dev_weight_tx_bias").stdout.strip() == "1"  # the quota is weight x bias
    queued = lambda: snapshot(g1).qdisc("eth0").qlen  # noqa: E731
    quiet = lambda: queued() == 0 and g1.check(f"cat {BQL}/inflight").stdout.strip() == "0"  # noqa: E731
    # the NIC's speed at the default quota: how long a full qdisc (and what is in flight) takes to drain
    send_from(g1, "eth0", "02:00:00:00:00:09", QUOTA_FRAMES)
    drain_s = wait_until(quiet, timeout=600)
    assert quiet(), f"eth0's qdisc holds {queued()} frames {drain_s:.0f} s after a burst at the default quota"
    assert g1.check(f"cat {BQL}/limit").stdout.strip() == str(FRAME)  # completions clamp it into [min, max]
    g1.check("sysctl -qw net.core.dev_weight=1")
    assert g1.check("sysctl -n net.core.dev_weight").stdout.strip() == "1"
    before = snapshot(g1)
    sent = refused = 0
    for _ in range(QUOTA_BURSTS):  # until the qdisc was full once: its state does not hang on one burst's luck
        burst = send_from(g1, "eth0", "02:00:00:00:00:09", QUOTA_FRAMES)
        sent, refused = sent + burst[0], refused + burst[1]
        if refused:
            break
    waited = wait_until(quiet, timeout=max(20 * drain_s, 10.0))
    d = delta(before, snapshot(g1))
    # the state: the byte limit held the queue until the qdisc was full (its drops, refused to the sender)
    assert refused > 0 and d.qdisc("eth0").drops == refused, (sent, refused, d.qdisc("eth0"))
    assert queued() == 0, (f"{queued()} frames are still queued {waited:.0f} s after the burst, the queue "
                           f"awake (at the default quota the qdisc drained in {drain_s:.1f} s)")
    assert d.qdisc("eth0").packets == d.link("eth0").tx.packets == sent, d.qdisc("eth0")


# A qdisc that holds what it is given: mq (or mqprio) over a 4-queue veth,
# each child a tbf at 8 bit/s (its first burst lets a few frames out, the
# next frame is a minute away) whose own child is pfifo_fast, sized by
# txqueuelen
HOLD, HELD = "lqh0", 4000
# two traffic classes of two queues each; priority 0 (the agent's frames) is class 0
MQPRIO_MAP, MQPRIO_QUEUES = [0] * 4 + [1] * 12, [[0, 1], [2, 3]]
ROOTS = {"mq": "mq",
         "mqprio": f"mqprio num_tc 2 map {' '.join(map(str, MQPRIO_MAP))} queues 2@0 2@2 hw 0"}


def holding(root: str) -> str:
    return (f"ip link add {HOLD} numtxqueues 4 type veth peer name lqh1 && "
            f"echo 1 > /proc/sys/net/ipv6/conf/{HOLD}/disable_ipv6 && "  # no frames but ours
            f"ip link set {HOLD} txqueuelen {HELD + 1000} up && ip link set lqh1 up && "
            f"tc qdisc replace dev {HOLD} root handle 1: {ROOTS[root]} && "
            + " && ".join(f"tc qdisc replace dev {HOLD} parent 1:{q} handle {q}0: tbf rate 8bit burst 1600 "
                          f"limit 100000 && tc qdisc replace dev {HOLD} parent {q}0:1 handle {q}1: pfifo_fast"
                          for q in range(1, 5)))


def hold_frames(guest, defer, root="mq"):
    """HELD frames sent into holding(root); the tbf children as they are then."""
    defer(guest.run, f"ip link del {HOLD}")
    guest.check(holding(root))
    sent, refused = send_from(guest, HOLD, "02:00:00:00:00:09", HELD)
    tbfs = [q for q in snapshot(guest).children(HOLD) if q.kind == "tbf"]
    held = sum(q.qlen for q in tbfs)
    # the state: every frame went in, and all but the first burst's are queued
    assert (sent, refused) == (HELD, 0), f"sent {sent}, refused {refused}"
    assert len(tbfs) == 4 and sum(q.drops for q in tbfs) == 0, tbfs
    assert held + sum(q.packets for q in tbfs) == HELD and held > HELD * 9 // 10, tbfs
    return tbfs


@pytest.mark.parametrize("root", [
    "mq", pytest.param("mqprio", marks=pytest.mark.needs("CONFIG_NET_SCH_MQPRIO"))])
@pytest.mark.needs("CONFIG_VETH", "CONFIG_NET_SCH_TBF")
def test_lockless_qdisc_mq_counts_the_packets_its_children_hold(guest, defer, root):
    """mq's (and mqprio's) qlen, backlog and byte and packet counts are its
    children's, summed afresh at each dump (mq_dump, mqprio_dump): read
    while the children hold packets, not only when idle, and read twice."""
    tbfs = hold_frames(guest, defer, root)
    for _ in range(2):
        now = snapshot(guest)
        tbfs = [q for q in now.children(HOLD) if q.kind == "tbf"]
        assert now.qdisc(HOLD).kind == root
        summed = {c: sum(getattr(q, c) for q in tbfs) for c in ("qlen", "backlog", "packets", "bytes", "drops")}
        assert {c: getattr(now.qdisc(HOLD), c) for c in summed} == summed, now.qdisc(HOLD)


@pytest.mark.needs("CONFIG_VETH", "CONFIG_NET_SCH_MQPRIO")
def test_lockless_qdisc_mqprio_shows_the_traffic_classes_it_was_given(guest, defer):
    """mqprio's dump gives back its configuration (classes, priority map,
    queue ranges) beside the summed counters, with its own children
    (pfifo_fast, lockless) counting what a pktgen thread per vCPU sent."""
    guest.check(f"ip link add lqp0 numtxqueues 4 type veth peer name lqp1 && ip link set lqp0 up && "
                f"ip link set lqp1 up && tc qdisc replace dev lqp0 root handle 1: {ROOTS['mqprio']} && "
                # its children would be the default qdisc (Debian's is fq_codel): lockless ones
                + " && ".join(f"tc qdisc replace dev lqp0 parent 1:{q} pfifo_fast" for q in range(1, 5)))
    defer(guest.run, "ip link del lqp0")
    shown = json.loads(guest.check("tc -j qdisc show dev lqp0 root").stdout)
    assert [(q["kind"], q["handle"]) for q in shown] == [("mqprio", "1:")], shown
    options = shown[0].get("options", {})
    assert (options.get("tc"), options.get("map"), options.get("queues")) == (2, MQPRIO_MAP, MQPRIO_QUEUES), shown
    ncpu = int(guest.check("nproc").stdout)
    run_and_account(guest, "lqp0", ncpu, [f"1:{q}" for q in range(1, 5)])


# A dump bigger than one netlink message: the kernel sends at most 32 KB
# at a time, and 60 mqprio devices' qdiscs (each root and its 4 children,
# every message over 150 bytes) make 300 messages, over 45 KB
MQPRIO_DEVICES, SHIMS = 60, 12


@pytest.mark.needs("CONFIG_VETH", "CONFIG_NET_SCH_MQPRIO")
def test_lockless_qdisc_mqprio_keeps_its_classes_in_a_dump_that_spans_messages(guest, defer):
    """A qdisc dump ends each netlink message at the first qdisc that does
    not fit, and the next message starts again from it.  mqprio's dump that
    runs out of room inside its options must fail so (its -1), not hand
    back a message without them.  Sixty mqprio devices behind twelve
    one-qdisc devices (noqueue: a veth up, its peer in another namespace),
    dumped thirteen times, one of those fewer each time (some 150 bytes),
    so that where each message ends moves across a whole
    device's qdiscs: every dump shows every mqprio with its classes."""
    ns = "lqs"
    defer(guest.run, f"ip netns del {ns}")  # the peers go with it, and each pair with its peer
    guest.check(f"ip netns add {ns} && "
                f"{{ for i in $(seq 0 {SHIMS - 1}); do echo link add lqs$i type veth peer name lqs${{i}}p netns {ns}; "
                f"echo link set lqs$i up; done; for i in $(seq 0 {MQPRIO_DEVICES - 1}); do echo link add lqm$i "
                f"numtxqueues 4 type veth peer name lqm${{i}}p netns {ns}; echo link set lqm$i up; done; }} | "
                f"ip -batch - && "
                f"for i in $(seq 0 {MQPRIO_DEVICES - 1}); do echo qdisc replace dev lqm$i root handle 1: "
                f"{ROOTS['mqprio']}; done | tc -batch -")
    for shims in range(SHIMS, -1, -1):
        shown = json.loads(guest.check("tc -j qdisc show").stdout)
        mqprios = [q for q in shown if q["kind"] == "mqprio"]
        # the state: a dump of more messages than one 32 KB message holds
        assert len(shown) >= 5 * MQPRIO_DEVICES + shims, f"{len(shown)} qdiscs dumped"
        bare = [q.get("dev") for q in mqprios if q.get("options", {}).get("queues") != MQPRIO_QUEUES]
        assert (len(mqprios), bare) == (MQPRIO_DEVICES, []), \
            f"{shims} devices ahead: {len(mqprios)} mqprio qdiscs dumped, without their classes on {bare}"
        if shims:
            guest.check(f"ip link del lqs{shims - 1}")


@pytest.mark.needs("CONFIG_VETH", "CONFIG_NET_SCH_TBF", "CONFIG_SLUB")
def test_lockless_qdisc_pfifo_fast_frees_what_it_held_when_the_device_goes_down(guest, defer):
    """A device taken down with packets queued: the reset of its qdiscs
    (pfifo_fast_reset, through mq's and tbf's) empties them and frees every
    packet they held."""
    baseline = drained_slabs(guest)
    tbfs = hold_frames(guest, defer)
    guest.check(f"ip link set {HOLD} down")
    queued = [q for q in snapshot(guest).children(HOLD) if q.qlen or q.backlog]
    assert not queued, f"after the down: {queued}"
    beyond = leaks(guest, baseline)
    assert not beyond, f"after {sum(q.qlen for q in tbfs)} queued packets were reset: {'; '.join(beyond)}"


# Measured (tools/bench-lockless): four vCPUs on two host cores catch the
# mutant without MISSED at bursts 4-22 (median 7, 5 of 5 runs); two vCPUs
# caught it about once in 600 bursts of 50.  500 bursts: ~75 s on a good kernel.
BURSTS = 500
BURST = 20  # packets per thread


@pytest.mark.slow
@pytest.mark.guest(vcpus=4)
@pytest.mark.needs("CONFIG_VETH")
def test_lockless_qdisc_no_packet_left_behind_by_contended_bursts(guest):
    """Seed 000's lockless pfifo_fast and the "packet stuck" class of bug
    Linux fixed in 5.13 (__QDISC_STATE_MISSED): a CPU that enqueues while
    another holds the qdisc's seqlock and is finishing its run must leave
    it a note, or its packet stays queued with nobody to send it.  Many
    short bursts, one pktgen thread per vCPU ending together on one
    pfifo_fast: after every burst the qdisc is empty.  (A stuck packet
    also holds pktgen, which waits for its last packet to be freed.)"""
    ncpu = int(guest.check("nproc").stdout)
    guest.check("ip link add lq0 type veth peer name lq1 && ip link set lq0 up && ip link set lq1 up && "
                "tc qdisc replace dev lq0 root handle 1: pfifo_fast")
    pktgen = Pktgen(guest)
    mac = guest.check("cat /sys/class/net/lq1/address").stdout.strip()
    setup = pktgen.script("lq0", count=BURST, threads=ncpu, xmit_mode="queue_xmit", dst_mac=mac)
    guest.check(setup.rsplit("\n", 1)[0])  # everything but the start
    try:
        for burst in range(1, BURSTS + 1):
            start = guest.spawn("echo start > /proc/net/pktgen/pgctrl")
            try:
                start.wait(10)
            except CommandTimeout:
                q = snapshot(guest).qdisc("lq0")
                guest.run(f"{GUEST_AGENT} --send lq0 {mac} 1")  # a later packet sends the stuck one
                pytest.fail(f"burst {burst} of {BURSTS}: pktgen never finished; pfifo_fast holds {q.qlen} "
                            f"packet(s) ({q.backlog} bytes) with nobody to send them")
            if burst % 25 == 0 or burst == BURSTS:
                q = snapshot(guest).qdisc("lq0")
                assert (q.qlen, q.backlog) == (0, 0), f"after burst {burst}: {q}"
    finally:
        guest.run("echo stop > /proc/net/pktgen/pgctrl; ip link del lq0")
