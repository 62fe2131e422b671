"""Snapshot parsers on real kernel output (softnet_stat of 6.1, 6.12, 6.18; ethtool; qdiscs; threads)."""

import pytest

from harness.measure.observe import (host_link, MissingCounter, parse_cpu_list, parse_ethtool, parse_interrupts, parse_netdev,
                             parse_qdiscs, parse_softnet, parse_threads)

# 13 columns: the 5.10-6.7 layout (6.1), written in its format; 15 columns:
# real rows read on this host (6.18). A live guest (6.12) is parsed below.
ROWS_13 = ("0000a3f1 00000002 00000007 00000000 00000000 00000000 00000000 00000000 "
           "00000000 00000011 00000000 00000000 00000000\n"
           "00003a2c 00000000 00000001 00000000 00000000 00000000 00000000 00000000 "
           "00000000 00000004 00000000 00000003 00000001\n")
ROWS_15 = ("0000075e 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 "
           "00000000 00000000 00000000 00000000 00000000 00000000\n"
           "00002959 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 "
           "00000000 00000000 00000000 00000001 00000002 00000001\n")



# Real rows read in a 6.1.192 guest (tools/build-kernel --debian-source 6.1)
# after a few packets steered to CPU 1.
ROWS_6_1 = ("00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 "
            "00000000 00000000 00000000 00000000\n"
            "00000006 00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 "
            "00000000 00000000 00000000 00000001\n")


NETDEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  eth0:     640      10    0    1    0     0          0         0      140       2    0    3    0     0       0          0
"""


def test_softnet_13_columns():
    rows = parse_softnet(ROWS_13)
    assert rows[0].processed == 0xa3f1 and rows[0].dropped == 2 and rows[0].time_squeeze == 7
    assert rows[0].received_rps == 0x11 and rows[1].backlog_len == 3 and rows[1].cpu == 1
    with pytest.raises(MissingCounter, match="input_qlen"):
        _ = rows[0].input_qlen


def test_softnet_real_6_1_rows():
    rows = parse_softnet(ROWS_6_1)
    assert sorted(rows) == [0, 1] and rows[1].processed == 6 and rows[1].time_squeeze == 1
    assert rows[1].backlog_len == 0
    with pytest.raises(MissingCounter, match="process_qlen"):
        _ = rows[1].process_qlen


def test_softnet_15_columns():
    rows = parse_softnet(ROWS_15)
    assert rows[1].processed == 0x2959 and rows[1].input_qlen == 2 and rows[1].process_qlen == 1


def test_softnet_delta():
    before, after = parse_softnet(ROWS_13), parse_softnet(ROWS_13.replace("0000a3f1", "0000a4f1", 1))
    assert (after[0] - before[0]).processed == 0x100


def test_links_parse_proc_net_dev():
    eth0 = parse_netdev(NETDEV)["eth0"]
    assert (eth0.rx.packets, eth0.rx.bytes, eth0.rx.dropped) == (10, 640, 1)
    assert (eth0.tx.packets, eth0.tx.bytes, eth0.tx.dropped) == (2, 140, 3)


def test_host_link_reads_netlink_counters_and_names_a_missing_link():
    lo = host_link("lo")  # read only: the host's own loopback
    assert lo.name == "lo" and all(isinstance(n, int) for n in (lo.rx.packets, lo.tx.bytes, lo.tx.dropped))
    with pytest.raises(KeyError, match="no-such-link0"):
        host_link("no-such-link0")


def test_ethtool_queues_under_both_naming_schemes():
    nics = parse_ethtool("eth0 rx_queue_0_packets 5\neth0 rx_queue_1_packets 7\neth0 tx_queue_1_bytes 9\n"
                         "eth1 rx0_drops 1\neth1 rx1_kicks 3\neth1 tx1_kicks 4\neth1 rx_drops 2\n")
    assert nics["eth0"].queue(1).rx == {"packets": 7} and nics["eth0"].queue(1).tx == {"bytes": 9}
    assert nics["eth1"].queue(1).rx == {"kicks": 3} and nics["eth1"].queues == 2
    assert nics["eth1"]["rx_drops"] == 2
    with pytest.raises(KeyError, match="eth1: ethtool -S has no 'rx_packets'"):
        nics["eth1"]["rx_packets"]


def test_qdisc_delta_keeps_backlog_as_a_gauge():
    before = parse_qdiscs("eth0 mq 0: root 100 10 0 0 0 0 0\neth0 pfifo_fast 0: :1 100 10 0 0 0 0 0\n")
    after = parse_qdiscs("eth0 mq 0: root 300 30 2 0 1 64 1\neth0 pfifo_fast 0: :1 300 30 2 0 1 64 1\n")
    from harness.measure.observe import Snapshot
    d = Snapshot({}, {}, qdiscs=after) - Snapshot({}, {}, qdiscs=before)
    assert (d.qdisc("eth0").packets, d.qdisc("eth0").drops, d.qdisc("eth0").backlog) == (20, 2, 64)
    assert d.qdisc("eth0", ":1").kind == "pfifo_fast" and len(d.children("eth0")) == 1


def test_threads_interrupts_and_cpu_lists():
    assert parse_cpu_list("0-2,5") == {0, 1, 2, 5}
    threads = parse_threads("31 1 backlog_napi/1\n30 0 backlog_napi/0\n")
    assert [(t.pid, t.name, t.cpus) for t in threads] == [(30, "backlog_napi/0", {0}), (31, "backlog_napi/1", {1})]
    irqs = parse_interrupts("           CPU0       CPU1\n 33:          0          5  PCI-MSIX-0000:03:00.0"
                            "   1-edge      virtio1-input.0\nERR:          0\n")
    assert irqs[0].counts == (0, 5) and irqs[0].description.endswith("virtio1-input.0")
