"""Observations: softnet_stat across kernel layouts, and exact accounting of
frames sent from the host into a guest NIC (issue 4, first part)."""
import time

import pytest
from pyroute2 import IPRoute
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from harness.observe import MissingCounter, parse_links, parse_softnet, snapshot
from harness.traffic import send_frames

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


def test_softnet_13_columns():
    rows = parse_softnet(ROWS_13)
    assert rows[0].processed == 0xa3f1 and rows[0].dropped == 2 and rows[0].time_squeeze == 7
    assert rows[0].received_rps == 0x11 and rows[1].backlog_len == 3 and rows[1].cpu == 1
    with pytest.raises(MissingCounter, match="input_qlen"):
        rows[0].input_qlen


def test_softnet_15_columns():
    rows = parse_softnet(ROWS_15)
    assert rows[1].processed == 0x2959 and rows[1].input_qlen == 2 and rows[1].process_qlen == 1


def test_softnet_delta():
    before, after = parse_softnet(ROWS_13), parse_softnet(ROWS_13.replace("0000a3f1", "0000a4f1", 1))
    assert (after[0] - before[0]).processed == 0x100


def test_links_parse_ip_json():
    text = ('[{"ifname":"eth0","stats64":{"rx":{"bytes":640,"packets":10,"errors":0,"dropped":1},'
            '"tx":{"bytes":0,"packets":0,"errors":0,"dropped":0}}}]')
    eth0 = parse_links(text)["eth0"]
    assert eth0.rx.packets == 10 and eth0.rx.dropped == 1


def test_guest_softnet_is_parsed(guest):
    rows = snapshot(guest).softnet
    assert sorted(rows) == list(range(int(guest.check("nproc").stdout)))
    assert rows[0].processed >= 0


def test_frames_from_the_host_are_counted_exactly_in_the_guest(lab):
    """Send N frames into the guest's NIC from the host tap: the guest's rx
    counter grows by exactly N, the tap's tx counter too."""
    single = lab("single-mq")
    g1, tap = single.guest("g1"), single.taps["t0"]
    mac = g1.check("cat /sys/class/net/eth0/address").stdout.strip()
    frame = bytes(Ether(dst=mac, src="02:00:00:00:00:01", type=0x88b5) / Raw(b"\0" * 46))
    n = 500  # under the tap's ring (tx_queue_len 1000): none may be dropped
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=tap)[0]
        tx_before = ipr.link("get", index=index)[0].get("stats64").get("tx_packets")
        before = snapshot(g1)
        sent = send_frames(tap, [frame], n)
        assert (sent.accepted, sent.refused) == (n, 0), sent.errors
        for _ in range(100):  # the guest reads its queue at TCG speed
            delta = snapshot(g1) - before
            if delta.link("eth0").rx.packets >= n:
                break
            time.sleep(0.1)
        tx_after = ipr.link("get", index=index)[0].get("stats64").get("tx_packets")
    assert delta.link("eth0").rx.packets == n
    assert tx_after - tx_before == n
