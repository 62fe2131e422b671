"""defer_free (seed 001): a TCP stream with RFS, with net.core.skb_defer_max
at its default and at 0, across two vCPUs; both complete (and no splat).
Then the namespace holding one end is deleted while a stream runs (its
processes killed, so that nothing else keeps it alive), and it goes away
promptly: skbs deferred to another CPU's free list must not hold it."""
import time

import pytest

from harness.lab.hosts import Container
from harness.vocab import wait_gone
from harness.measure.traffic import tcp_stream

NS = "dfsrv"


@pytest.fixture
def rfs_pair(guest):
    """A server namespace on a veth pair; RFS on both receiving ends."""
    guest.check(
        f"ip netns add {NS} && ip link add dfc type veth peer name dfs netns {NS} && "
        "ip addr add 10.77.9.1/24 dev dfc && ip link set dfc up && "
        f"ip -n {NS} addr add 10.77.9.2/24 dev dfs && ip -n {NS} link set dfs up && ip -n {NS} link set lo up && "
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
