"""multiqueue: change a virtio NIC's active queue count with ``ethtool -L``
while several TCP flows run; no splat (the plugin fails the test on one),
the peer answers after every change, and more than one tx queue carried
traffic."""
import time

import pytest

from harness.measure.observe import snapshot
from harness.vocab import counting

CHANGES = 20


@pytest.mark.needs("CONFIG_XPS")
def test_multiqueue_channel_changes_under_tcp_flows(lab, defer):
    single = lab("single-mq")
    g1, peer = single.guest("g1"), single.host_ns("peer")
    queues = snapshot(g1).nic("eth0").queues
    assert queues >= 2, "single-mq.yaml gives eth0 two queues"
    for i in range(2):
        defer(peer.spawn(f"exec iperf3 -s -1 -p {5201 + i}").kill)
    time.sleep(0.5)
    with counting(g1) as d:
        # one client per CPU: XPS maps each CPU to its own tx queue
        for i in range(2):
            defer(g1.spawn(f"taskset -c {i} iperf3 -c 10.77.0.1 -p {5201 + i} -t 30 -J").kill)
        time.sleep(1.0)
        for n in range(CHANGES):
            count = 1 if n % 2 == 0 else queues
            g1.check(f"ethtool -L eth0 combined {count}")
            g1.check("ping -c 1 -W 5 10.77.0.1", timeout=30)
        g1.check(f"ethtool -L eth0 combined {queues}")
    per_queue = [q.packets for q in d.children("eth0")]
    assert sum(1 for p in per_queue if p > 0) >= 2, f"tx packets per queue: {per_queue}"
    assert g1.check("ethtool -l eth0").stdout.count(f"Combined:\t{queues}") == 2
