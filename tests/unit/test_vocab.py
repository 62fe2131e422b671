"""The tests' vocabulary (harness.vocab) and the Python topology builder."""
import dataclasses
from pathlib import Path

import pytest

from harness.lab import model
from harness.lab.topo import Topo
from harness.measure.observe import parse_softnet
from harness.vocab import Counting, column, delta, total

ROOT = Path(__file__).resolve().parents[2]
# two CPUs' rows, 6.12's 13 columns: processed, dropped, time_squeeze, 0 x6, received_rps,
# flow_limit_count, backlog_len, cpu index (softnet_stat is hex)
BEFORE = parse_softnet("00000010 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 "
                       "00000000 00000000 00000005 00000000\n"
                       "00000020 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 "
                       "00000003 00000000 00000000 00000001\n")
AFTER = parse_softnet("00000110 00000004 00000000 00000000 00000000 00000000 00000000 00000000 00000000 "
                      "00000000 00000000 00000002 00000000\n"
                      "00000020 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 "
                      "00000009 00000000 00000000 00000001\n")


def test_delta_of_softnet_rows_differences_counters_and_keeps_gauges():
    d = delta(BEFORE, AFTER)
    assert column(d, "processed") == {0: 0x100, 1: 0}
    assert total(d, "dropped") == 3 and total(d, "processed", "dropped") == 0x103
    assert column(d, "received_rps") == {0: 0, 1: 6}
    assert d[0].backlog_len == AFTER[0].backlog_len  # a gauge: the later value


def test_delta_leaves_out_a_cpu_the_earlier_snapshot_lacks():
    assert set(delta({0: BEFORE[0]}, AFTER)) == {0}


def test_counting_is_read_after_its_block_only():
    values = iter([{0: 5}, {0: 12}])
    with Counting(lambda: next(values)) as c:
        with pytest.raises(RuntimeError, match="inside its block"):
            c[0]
    assert c[0] == 7


def proxy_hops() -> Topo:
    t = Topo("proxy-hops")
    g1 = t.guest("g1", vcpus=2, memory_mb=768)
    client, proxy = g1.container("client"), g1.container("proxy", http_proxy="10.77.3.2:80")
    server = g1.container("server", http_server=True)
    t.veth(client.end("c0", "10.77.2.2/24"), proxy.end("p0", "10.77.2.1/24"), qdisc="pfifo_fast")
    t.veth(proxy.end("p1", "10.77.3.1/24"), server.end("s0", "10.77.3.2/24"), qdisc="pfifo_fast")
    return t


def guest_pair() -> Topo:
    t = Topo("guest-pair")
    br0 = t.bridge("br0")
    t.guest("g1").nic("t1", bridge=br0, address="10.77.1.1/24")
    t.guest("g2").nic("t2", bridge=br0, address="10.77.1.2/24")
    return t


@pytest.mark.parametrize("build", [proxy_hops, guest_pair])
def test_a_python_topology_is_the_same_model_as_its_yaml_file(build):
    built = build().build()
    loaded = model.load(ROOT / "topologies" / f"{built.name}.yaml")
    assert dataclasses.replace(built, source="") == dataclasses.replace(loaded, source="")


def test_a_python_topology_is_validated_as_a_file_is():
    t = Topo("one-way")
    a = t.guest("g1").container("a")
    t.guest("g1b").container("b")
    a.link("x0", "container:b", "10.77.5.1/24")
    with pytest.raises(model.TopologyError, match="<python>"):
        t.build()
