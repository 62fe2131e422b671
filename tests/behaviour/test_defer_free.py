"""defer_free (seed 001): skbs are freed on the CPU that allocated them.

A sender pinned to CPU 0 allocates every data skb of one TCP connection; a
reader pinned to CPU 1 copies them out.  Traced (skb_copy_datagram_iovec on
the reader, consume_skb wherever each was freed, NET_RX softirq runs), each
read skb is followed to its free:

- at the default net.core.skb_defer_max every one is freed on CPU 0, none on
  the reader's CPU;
- skb_defer_max=0 disables deferral: none is freed through CPU 0's list;
- skb_defer_max=4 bounds the list: a full list holds exactly 4 (some skbs
  are freed at once instead), and while the sender's CPU sits idle an IPI,
  sent when the list is half full and not before, makes it free them.

Also a TCP stream with RFS at the default and at 0 (both complete, no
splat), and the namespace holding one end deleted under a stream goes away
promptly: skbs deferred to another CPU's list must not hold it."""
import json
import time
from pathlib import Path

import pytest

from harness.kernel.needs import Version
from harness.lab.hosts import Container
from harness.measure.observe import snapshot
from harness.measure.tracing import batches, read_skb_fates, trace_events
from harness.vocab import delta, wait_gone
from harness.measure.traffic import tcp_stream

NS = "dfsrv"
TCP_PINNED = Path(__file__).parent / "guest" / "tcp_pinned.py"
SENDER, READER = 0, 1    # CPUs: the sender's allocates every data skb, the reader's reads them
SKB_FATES = ["skb:consume_skb", "skb:skb_copy_datagram_iovec", "irq:softirq_entry", "irq:softirq_exit"]


PAIR = (f"ip netns add {NS} && ip link add dfc type veth peer name dfs netns {NS} && "
        "ip addr add 10.77.9.1/24 dev dfc && ip link set dfc up && "
        f"ip -n {NS} addr add 10.77.9.2/24 dev dfs && ip -n {NS} link set dfs up && ip -n {NS} link set lo up")


@pytest.fixture
def rfs_pair(guest):
    """A server namespace on a veth pair; RFS on both receiving ends."""
    guest.check(
        f"{PAIR} && "
        "sysctl -qw net.core.rps_sock_flow_entries=4096 && "
        "echo 4096 > /sys/class/net/dfc/queues/rx-0/rps_flow_cnt && echo 3 > /sys/class/net/dfc/queues/rx-0/rps_cpus && "
        f"ip netns exec {NS} sh -c 'echo 4096 > /sys/class/net/dfs/queues/rx-0/rps_flow_cnt && "
        "echo 3 > /sys/class/net/dfs/queues/rx-0/rps_cpus'")
    default = guest.check("sysctl -n net.core.skb_defer_max").stdout.strip()
    yield default
    guest.run(f"sysctl -qw net.core.skb_defer_max={default} net.core.rps_sock_flow_entries=0; "
              f"{KILL_AND_DELETE}; ip link del dfc 2>/dev/null; true")
    gone_within(guest, 30)


KILL_AND_DELETE = f"kill -9 $(ip netns pids {NS}) 2>/dev/null; ip netns del {NS} 2>/dev/null"


def gone_within(guest, limit):
    """Seconds until the namespace's veth (and so the namespace) is gone."""
    return wait_gone(guest, "dfc", timeout=limit)


@pytest.fixture
def pinned_pair(guest):
    """A server namespace on a veth pair without offloads (one skb per
    segment) or steering: the reader's skbs are received, in softirq, on
    the CPU that sent them.  Yields skb_defer_max's default."""
    guest.check(f"{PAIR} && ethtool -K dfc tso off gso off >/dev/null && "
                f"ip netns exec {NS} ethtool -K dfs tso off gso off >/dev/null")
    default = guest.check("sysctl -n net.core.skb_defer_max").stdout.strip()
    yield int(default)
    guest.run(f"sysctl -qw net.core.skb_defer_max={default}; {KILL_AND_DELETE}; ip link del dfc 2>/dev/null; true")
    gone_within(guest, 30)


def pinned_stream(guest, *, count: int, size: int = 1000, gap_ms: float = 2, queued: int = 0,
                  chunk: int = 1 << 18) -> None:
    """One connection from SENDER to READER (tests/behaviour/guest/tcp_pinned.py);
    then a packet sent from SENDER's CPU runs its NET_RX, which frees what is
    still deferred to it."""
    server = Container(guest, NS).spawn(f"exec python3 {TCP_PINNED} server 10.77.9.2 5201 {READER} "
                                        + (f"{queued} {chunk}" if queued else ""))
    try:
        guest.check(f"python3 {TCP_PINNED} client 10.77.9.2 5201 {SENDER} {count} {size} {gap_ms}", timeout=180)
        result = server.wait(60)
    finally:
        server.kill()
    assert result.rc == 0, result.stderr[-500:]
    guest.check(f"taskset -c {SENDER} ping -q -c 1 -W 5 10.77.9.2")
    got = json.loads(result.stdout.splitlines()[-1])
    assert got["received"] == count * size, got


@pytest.mark.needs("CONFIG_VETH", "CONFIG_NET_NS", "CONFIG_FTRACE")
@pytest.mark.guest(vcpus=2)
def test_defer_free_skbs_are_freed_on_the_cpu_that_allocated_them(guest, pinned_pair):
    with trace_events(guest, SKB_FATES) as trace:
        pinned_stream(guest, count=300)
    assert trace.lost == 0, f"{trace.lost} trace events lost"
    fates = read_skb_fates(trace.events, READER)
    assert fates.read > 0, "the reader read no skb"
    assert fates.freed_on == {SENDER: fates.read}, fates
    assert fates.untraced == 0, fates


@pytest.mark.needs("CONFIG_VETH", "CONFIG_NET_NS", "CONFIG_FTRACE")
@pytest.mark.guest(vcpus=2)
def test_defer_free_skb_defer_max_0_disables_deferral(guest, pinned_pair):
    guest.check("sysctl -qw net.core.skb_defer_max=0")
    with trace_events(guest, SKB_FATES) as trace:
        pinned_stream(guest, count=300)
    assert trace.lost == 0, f"{trace.lost} trace events lost"
    fates = read_skb_fates(trace.events, READER)
    assert fates.read > 0, "the reader read no skb"
    assert fates.freed_on == {}, f"deferral is off, yet {fates.freed_on} read skbs went through a CPU's list"


BOUND = 4            # skb_defer_max: an IPI at 2 queued, none queued beyond 4
QUEUED = 3_000_000   # bytes the reader finds queued when it starts reading
BIG = 16 << 20
STREAMS = 5          # the kick can win the race to the bound (1 stream in 5 here): a few more tries


@pytest.mark.needs("CONFIG_VETH", "CONFIG_NET_NS", "CONFIG_FTRACE")
@pytest.mark.guest(vcpus=2)
def test_defer_free_skb_defer_max_bounds_the_list_and_an_ipi_kicks_the_idle_cpu(guest, pinned_pair):
    """The sender writes everything and sleeps (blocked until EOF) before
    the reader starts: while the reader reads, nothing runs NET_RX on the
    sender's CPU but the IPI its half-full list sends.  Streams until one
    filled the list (the IPI's flush can keep up with a reader)."""
    bounded_list_kicked_on_every_fill(guest, by_ipi=True)


@pytest.mark.needs("CONFIG_VETH", "CONFIG_NET_NS", "CONFIG_FTRACE",
                   Version((6, 10), "the thread_backlog_napi boot parameter"))
@pytest.mark.guest(vcpus=2, cmdline="thread_backlog_napi")
def test_defer_free_skb_defer_max_bounds_the_list_and_the_backlog_thread_is_kicked(guest, pinned_pair):
    """With backlog NAPI threads (seed 002's mode, PREEMPT_RT's default) the
    half-full list's kick schedules the idle CPU's backlog thread instead of
    sending an IPI, and that thread's poll loop flushes the list."""
    assert guest.check("ps -eo comm | grep -c '^backlog_napi/'").stdout.strip() == "2"
    bounded_list_kicked_on_every_fill(guest, by_ipi=False)


def bounded_list_kicked_on_every_fill(guest, *, by_ipi: bool):
    guest.check(f"sysctl -qw net.core.skb_defer_max={BOUND} net.core.rmem_max={BIG} net.core.wmem_max={BIG}")
    # a list filled and flushed before the traced streams: from then on, what
    # a flush leaves in the count is what the next list starts from
    pinned_stream(guest, count=1, size=QUEUED, gap_ms=0, queued=QUEUED, chunk=1 << 20)
    for streams in range(1, STREAMS + 1):  # noqa: B007 (named in the failure)
        before = snapshot(guest)
        with trace_events(guest, [*SKB_FATES, "napi:napi_poll"]) as trace:
            pinned_stream(guest, count=1, size=QUEUED, gap_ms=0, queued=QUEUED, chunk=1 << 20)
        assert trace.lost == 0, f"{trace.lost} trace events lost"
        fates = read_skb_fates(trace.events, READER)
        if fates.untraced > 0:
            break
    ipis = delta(before, snapshot(guest)).irq("CAL")
    freed = {id(e) for e in fates.frees}
    reads = [e for e in trace.events if e.name == "skb_copy_datagram_iovec" and e.cpu == READER]
    per_flush = batches(trace.events, SENDER, lambda e: id(e) in freed)
    while_reading = lambda e: reads[0].timestamp <= e.timestamp <= reads[-1].timestamp  # noqa: E731
    kicked = sum(1 for e in trace.events if id(e) in freed and e.cpu == SENDER and while_reading(e))
    # the flushes that came while the reader read (the last one may straddle its end)
    kicked_flushes = batches(trace.events, SENDER, lambda e: id(e) in freed and while_reading(e))[:-1]
    # the state the bound exists for: the list was full (skbs were freed at once instead)
    assert fates.untraced > 0, f"the list never reached skb_defer_max={BOUND} in {streams} streams: {fates}"
    # a full list holds exactly the bound: each flush starts the count from 0 again
    assert max(per_flush) == BOUND, f"flushes freed {per_flush} deferred skbs; skb_defer_max is {BOUND}"
    # the kick comes as the skb after half the bound is queued, not before: what the IPI's one
    # flush frees is more than half (3 or 4 each in 8 runs here).  A woken backlog thread flushes
    # again each time round its poll loop, whatever the list holds then (1 in one CI run).
    assert not by_ipi or (kicked_flushes and min(kicked_flushes) > BOUND // 2), (
        f"while the reader read, flushes freed {kicked_flushes} deferred skbs: a kick came before the list "
        f"was half full (skb_defer_max {BOUND})")
    # every fill of the list is kicked: all but the last fill or two (one flushing as the reads
    # end) were freed while the reader read, more than two lists' worth (a kick that is not
    # re-armed leaves the list full for good; here 9 in 10 of the skbs read were freed so with
    # the IPI, 1 in 4 with the slower thread wakeup)
    assert kicked >= len(freed) - 2 * BOUND and kicked > 2 * BOUND, (
        f"while the sender slept, {kicked} of the {fates.read} skbs read ({len(freed)} deferred) were freed "
        f"on its CPU (function call IPIs by CPU: {ipis}): the half-full kick did not come for each fill")


@pytest.mark.needs("CONFIG_VETH", "CONFIG_NET_NS", "CONFIG_RPS")
@pytest.mark.guest(vcpus=2)
@pytest.mark.parametrize("defer_max", ["default", "0"])
def test_defer_free_tcp_stream_with_rfs(guest, rfs_pair, defer_max):
    value = rfs_pair if defer_max == "default" else defer_max
    guest.check(f"sysctl -qw net.core.skb_defer_max={value}")
    stream = tcp_stream(Container(guest, NS), guest, "10.77.9.2", seconds=3)
    assert stream.bits_per_second > 0 and stream.bytes > 0


@pytest.mark.needs("CONFIG_VETH", "CONFIG_NET_NS", "CONFIG_RPS")
@pytest.mark.guest(vcpus=2)
def test_defer_free_namespace_deleted_under_stream(guest, rfs_pair):
    server = Container(guest, NS).spawn("exec iperf3 -s -1 -B 10.77.9.2")
    time.sleep(0.5)
    client = guest.spawn("iperf3 -c 10.77.9.2 -t 30")
    time.sleep(2.0)
    guest.check(KILL_AND_DELETE)
    took = gone_within(guest, 30)
    client.kill()
    server.kill()
    assert took < 10.0, f"the namespace's devices took {took:.1f}s to go"
