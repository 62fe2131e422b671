"""vhost-net for real, in a guest that hosts guests (topologies/nested-vhost.yaml).

Seed 004 (tun's tx skb ring, vhost-net's batched peek) is a host-side
patch: its code runs in the kernel that holds the taps.  Here that kernel
is the outer guest's, the kernel under test (--kernel), and the nested
guest n1 reaches the outer taps through vhost-net (t0, two queue pairs)
and through QEMU's own virtio-net backend (t1).  The same lab also checks
the harness's promises one level down: exact counts through the relayed
command channel, splats attributed to the guest and level that printed
them, and nothing left inside the outer guest after the nested lab goes.
"""
import contextlib
import time

import pytest

from harness.measure.observe import snapshot
from harness.measure.traffic import send_from
from harness.vocab import delta

# the outer guest's kernel (the session's) holds the taps and vhost-net
pytestmark = [pytest.mark.slow, pytest.mark.needs("CONFIG_TUN", "CONFIG_BRIDGE", "CONFIG_NET_NS", "CONFIG_VETH")]



@pytest.fixture
def nested(lab):
    outer = lab("nested-vhost")
    return outer, outer.nested("host1")


def mac_of(where, dev):
    return where.check(f"cat /sys/class/net/{dev}/address").stdout.strip()


@contextlib.contextmanager
def arp_off(*links):
    """No ARP on these (endpoint, device) links meanwhile: a neighbour
    probe left over from the lab's reachability pings would be one frame
    more on the counters."""
    for where, dev in links:
        where.check(f"ip link set dev {dev} arp off")
    try:
        yield
    finally:
        for where, dev in links:
            where.check(f"ip link set dev {dev} arp on")


def qemu_threads(host, domain_name):
    """Thread names of the QEMU process running ``domain_name`` in ``host``
    (libvirt keeps its pid), and that pid."""
    pid = int(host.check(f"cat /run/libvirt/qemu/{domain_name}.pid").stdout)
    return host.check(f"cat /proc/{pid}/task/*/comm").stdout.split(), pid


@pytest.mark.needs("CONFIG_VHOST_NET")
def test_nested_vhost_backend_and_a_worker_per_queue_pair(nested):
    """n1's 2-queue NIC on t0 runs on vhost-net: libvirt reports the vhost
    backend and the outer kernel runs one vhost worker per queue pair, as
    threads of n1's QEMU named vhost-<QEMU's pid>; t1's NIC (vhost: off)
    adds none."""
    outer, inner = nested
    assert inner.backends == {"t0": "vhost", "t1": "userspace"}
    threads, pid = qemu_threads(outer.guest("host1"), inner.guest("n1").domain_name)
    assert threads.count(f"vhost-{pid}") == 2, threads


def test_nested_frames_through_vhost_counted_exactly_on_both_levels(nested):
    """Frames from n1 out through vhost into the outer tap and on to the
    peer namespace, then back: every count agrees on both levels."""
    outer, inner = nested
    host1, n1, peer = outer.guest("host1"), inner.guest("n1"), inner.host_ns("peer")
    tap = inner.taps["t0"]
    with arp_off((n1, "eth0"), (peer, "p0")):
        before = {"n1": snapshot(n1), "host1": snapshot(host1), "peer": snapshot(peer)}
        out_sent, out_refused = send_from(n1, "eth0", mac_of(peer, "p0"), 2000)
        back_sent, back_refused = send_from(peer, "p0", mac_of(n1, "eth0"), 2000)
        time.sleep(1)  # what vhost and the guest still hold
        d = delta(before, {"n1": snapshot(n1), "host1": snapshot(host1), "peer": snapshot(peer)})

    assert out_sent + out_refused == 2000 and back_sent + back_refused == 2000
    assert out_sent > 0 and back_sent > 0
    # n1 -> vhost -> tap (its rx) -> bridge -> peer
    assert d["n1"].link("eth0").tx.packets == out_sent
    assert d["host1"].link(tap).rx.packets == out_sent
    assert d["peer"].link("p0").rx.packets == out_sent
    # peer -> bridge -> tap (its tx; a full ring drops, counted) -> vhost -> n1
    assert d["peer"].link("p0").tx.packets == back_sent
    assert d["host1"].link(tap).tx.packets + d["host1"].link(tap).tx.dropped == back_sent
    assert d["n1"].link("eth0").rx.packets == d["host1"].link(tap).tx.packets


@pytest.mark.parametrize("tap_name", ["t0", "t1"], ids=["vhost", "userspace"])
def test_ring_drops_nested_guest_paused(nested, tap_name):
    """Seed 004 in the outer kernel: n1 paused, its tap's ring takes at most
    tx_queue_len frames (256) and refuses the rest, each counted in the
    tap's tx_dropped; resumed, every accepted frame is taken from the ring
    (the tap's tx) and n1 receives them, through vhost-net's batched peek
    (t0) or QEMU's read (t1).

    The tap gets no qdisc for the test, so that a refusal reaches the
    sender (a qdisc would hold the frame instead); ptr_ring's consumer
    zeroes consumed slots in batches of 16, so a drained ring can hold up
    to 15 fewer.  With vhost, pausing stops vhost and hands the tap back
    to QEMU's own backend, which reads one frame (the flow's one queue)
    that the stopped guest cannot take and purges it when it restarts
    vhost (virtio_net_vhost_status, "to avoid touching rings when vhost is
    running"): n1 gets all but that one.  Traced in the outer kernel:
    vhost's tun_recvmsg ran for the others, QEMU's read() for that one."""
    outer, inner = nested
    host1, n1, peer = outer.guest("host1"), inner.guest("n1"), inner.host_ns("peer")
    index = ["t0", "t1"].index(tap_name)
    tap, dev = inner.taps[tap_name], f"eth{index}"
    qlen = int(host1.check(f"cat /sys/class/net/{tap}/tx_queue_len").stdout)
    host1.check(f"tc qdisc replace dev {tap} root noqueue")
    with contextlib.ExitStack() as undo:
        undo.callback(host1.check, f"tc qdisc del dev {tap} root")
        undo.enter_context(arp_off((n1, dev), (peer, f"p{index}")))
        mac = mac_of(n1, dev)
        before_n1, before_host = snapshot(n1), snapshot(host1)
        n1.pause()
        try:
            sent, refused = send_from(host1, tap, mac, 3 * qlen)
            dropped = (snapshot(host1) - before_host).link(tap).tx.dropped
        finally:
            n1.resume()
        deadline = time.monotonic() + 60 * n1.time_scale
        while (snapshot(n1) - before_n1).link(dev).rx.packets < sent and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1)  # anything beyond the accepted frames would show now
        received = (snapshot(n1) - before_n1).link(dev).rx.packets
        consumed = (snapshot(host1) - before_host).link(tap).tx.packets
    assert sent + refused == 3 * qlen
    assert qlen - 16 < sent <= qlen
    assert dropped == refused
    assert consumed == sent
    assert received == sent - (1 if inner.backends[tap_name] == "vhost" else 0)


@pytest.mark.allow_splat("warning")
def test_nested_splats_are_attributed_to_the_guest_and_level_that_printed_them(nested, harness, request):
    """A WARN printed by n1's kernel is found on n1's console (relayed from
    inside host1), and one printed by host1's on host1's, each once: the
    session's per-test splat check sees both guests."""
    outer, inner = nested
    host1, n1 = outer.guest("host1"), inner.guest("n1")
    assert {host1, n1} <= set(harness.guests)
    n1.check("echo '<4>WARNING: CPU: 0 PID: 1 at net/core/dev.c:4004 nested_inner_test+0x0/0x10' > /dev/kmsg")
    host1.check("echo '<4>WARNING: CPU: 0 PID: 1 at net/core/dev.c:4005 nested_outer_test+0x0/0x10' > /dev/kmsg")
    found = {(g.name, s.kind, "inner" if "nested_inner_test" in s.text else "outer")
             for g, s in harness.collect_splats(request.node)}
    assert found == {(n1.name, "warning", "inner"), (host1.name, "warning", "outer")}


def test_nested_lab_down_leaves_nothing_in_its_host_guest(nested):
    """The nested lab's teardown, with its host guest still up: no domain,
    QEMU, relay or nest server, no prefixed link or namespace and no run
    directory are left in it.  (Runs last: it takes the nested lab down.)"""
    outer, inner = nested
    host1 = outer.guest("host1")
    lab_id = inner.lab_id
    assert host1.check(f"ip -o link | grep -c nh{lab_id} || true").stdout.strip() != "0"
    inner.down()
    left = host1.check(
        "virsh -c qemu:///system list --all --name | grep . ; "
        f"ip -o link | grep nh{lab_id} ; ip netns list | grep nh ; "
        "ls /run/netdev-harness | grep -v '^labs$' ; ls /run/netdev-harness/labs ; "
        "pgrep -a qemu-system ; pgrep -a socat ; pgrep -af 'harness[.]lab[.]nestd' ; true").stdout
    assert left.strip() == ""
