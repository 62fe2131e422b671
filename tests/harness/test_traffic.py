"""Traffic drivers against real kernels (issue 4): pktgen's own count agrees
with the guest's counters; an iperf3 stream and a wrk run through the
proxy-hops topology report consistent figures; a host capture sees exactly
what was sent."""
import pytest
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from harness.measure.pktgen import Pktgen, PktgenError
from harness.measure.traffic import Capture, http_load, send_frames, tcp_stream
from harness.vocab import counting


@pytest.mark.needs(Pktgen.NEEDS)
def test_pktgen_count_agrees_with_guest_tx_counters(lab):
    """pktgen count 10000 on each of two threads: each reports sent 10000,
    and the guest's eth0 tx counter grows by exactly 20000."""
    g1 = lab("single-mq").guest("g1")
    with counting(g1) as delta:
        result = Pktgen(g1).run("eth0", count=10_000, threads=2, dst_mac="02:00:00:00:00:09")
    assert [t.sent for t in result.threads] == [10_000, 10_000]
    assert result.errors == 0 and result.pps > 0
    assert delta.link("eth0").tx.packets == 20_000


@pytest.mark.needs(Pktgen.NEEDS)
def test_pktgen_rejects_a_bad_parameter(lab):
    g1 = lab("single-mq").guest("g1")
    with pytest.raises(PktgenError, match="kpktgend_0 refused: add_device nosuch0@0"):
        Pktgen(g1).run("nosuch0", count=10, threads=1)


def test_host_capture_sees_exactly_what_was_sent(lab, tmp_path):
    single = lab("single-mq")
    tap = single.taps["t0"]
    frame = bytes(Ether(dst="02:00:00:00:00:09", src="02:00:00:00:00:01", type=0x88b5) / Raw(b"\x42" * 46))
    with Capture(tap, pcap=tmp_path / "t0.pcap", bpf="ether proto 0x88b5") as cap:
        sent = send_frames(tap, [frame], 50, rate_pps=1000)
    assert sent.accepted == 50
    assert [bytes(p) for p in cap.packets] == [frame] * 50
    assert (tmp_path / "t0.pcap").stat().st_size > 50 * 60


def test_tcp_stream_between_guests(lab):
    pair = lab("guest-pair")
    g1, g2 = pair.guest("g1"), pair.guest("g2")
    with counting(g2) as delta:
        stream = tcp_stream(g2, g1, "10.77.1.2", seconds=2)
    assert stream.bits_per_second > 0 and stream.bytes > 0
    # the receiver's eth0 got at least every payload byte iperf3 counted
    assert delta.link("eth0").rx.bytes >= stream.bytes


def test_http_through_proxy_hops(lab):
    hops = lab("proxy-hops")
    client = hops.container("g1", "client")
    result = http_load(client, "http://10.77.2.1/", connections=8, seconds=2)
    assert result.requests > 0 and result.errors == 0
    assert result.requests_per_second == pytest.approx(result.requests / result.seconds, rel=0.05)
