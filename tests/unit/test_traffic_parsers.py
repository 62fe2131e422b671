"""pktgen's and wrk's output parsed."""
import pytest

from harness.measure.pktgen import PktgenError, parse_result
from harness.measure.traffic import parse_wrk

PKTGEN_RESULT = """Params: count 10000  min_pkt_size: 60  max_pkt_size: 60
Current:
     pkts-sofar: 10000  errors: 3
Result: OK: 446330(c446000+d330) usec, 10000 (60byte,0frags)
  22404pps 10Mb/sec (10753920bps) errors: 3
"""

WRK_OUTPUT = """Running 2s test @ http://10.77.2.1/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    25.10ms    3.22ms  40.01ms   70.00%
  1234 requests in 2.00s, 345.67KB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:    617.00
Transfer/sec:    172.83KB
"""



def test_pktgen_result_parser():
    r = parse_result("eth0@0", PKTGEN_RESULT)
    assert (r.sent, r.errors, r.pps, r.bps, r.usec, r.pkt_size) == (10000, 3, 22404, 10753920, 446330, 60)
    with pytest.raises(PktgenError, match="No such parameter"):
        parse_result("eth0@0", 'Result: No such parameter "cuont"')


def test_wrk_parser():
    r = parse_wrk(WRK_OUTPUT)
    assert (r.requests, r.seconds, r.requests_per_second, r.non_2xx_3xx) == (1234, 2.0, 617.0, 5)
    assert r.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 1} and r.errors == 8
