"""flush_unregister: a device (or the namespace holding it) is deleted while
RPS-steered traffic is queued for it on another CPU; flush_backlog() must
drop those packets so that the unregister completes (seed 002's
process_queue handshake, and the upstream backlog threads).

The kernel frees flushed packets without counting them anywhere (6.12:
SKB_DROP_REASON_DEV_READY), so what is checked is what the kernel does
count: the deletion returns promptly, no splat (the plugin fails the test on
"unregister_netdevice: waiting for ..." or any other), and every backlog
queue of every CPU is empty afterwards.
"""
import time

import pytest

from harness.observe import snapshot
from harness.rps import SteeredVeth, cpu_hog

DELETE_WITHIN_S = 10.0  # under TCG


def queues_empty(guest):
    rows = snapshot(guest).softnet.values()
    return all(getattr(r, "backlog_len", 0) == 0 for r in rows) and \
        all(r.values.get("input_qlen", 0) == 0 and r.values.get("process_qlen", 0) == 0 for r in rows)


def delete_under_traffic(guest, *, in_namespace: bool):
    pair = SteeredVeth(guest, target_cpu=1, sender_cpu=0, netns="flushns" if in_namespace else None).create()
    run = pair.start(2_000_000, rate_pps=100_000)
    try:
        time.sleep(1.0)  # traffic is flowing into CPU 1's backlog
        t0 = time.monotonic()
        if in_namespace:
            guest.check(f"ip netns del {pair.netns}", timeout=60)
            # the namespace's devices go with it: wait for the veth's other end
            deadline = t0 + 60
            while guest.run(f"test -e /sys/class/net/{pair.tx}").rc == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            guest.check(f"ip link del {pair.tx}", timeout=60)
        took = time.monotonic() - t0
        run.job.wait(60)  # pktgen stops by itself once its device is gone
    finally:
        run.stop()
        pair.delete()
    return took


def set_mode(guest, mode):
    if mode == "backlog_threaded":
        if guest.run("test -e /proc/sys/net/core/backlog_threaded").rc != 0:
            pytest.skip(f"kernel {guest.release} has no net.core.backlog_threaded (seed 002)")
        guest.check("echo 1 > /proc/sys/net/core/backlog_threaded")


def reset_mode(guest, mode):
    if mode == "backlog_threaded":
        guest.check("echo 0 > /proc/sys/net/core/backlog_threaded")


@pytest.mark.parametrize("in_namespace", [False, True], ids=["device", "namespace"])
@pytest.mark.parametrize("mode", ["softirq", "backlog_threaded"])
@pytest.mark.guest(vcpus=2)
def test_flush_unregister_under_rps_traffic(guest, mode, in_namespace):
    set_mode(guest, mode)
    try:
        took = delete_under_traffic(guest, in_namespace=in_namespace)
    finally:
        reset_mode(guest, mode)
    assert took < DELETE_WITHIN_S, f"deleting took {took:.1f}s"
    assert queues_empty(guest)


@pytest.mark.parametrize("in_namespace", [False, True], ids=["device", "namespace"])
@pytest.mark.guest(vcpus=2, cmdline="thread_backlog_napi")
def test_flush_unregister_under_rps_traffic_backlog_threads(guest, kernel, in_namespace):
    if kernel.version < (6, 10):
        pytest.skip(f"needs thread_backlog_napi (Linux >= 6.10); this kernel is {kernel.release}")
    took = delete_under_traffic(guest, in_namespace=in_namespace)
    assert took < DELETE_WITHIN_S, f"deleting took {took:.1f}s"
    assert queues_empty(guest)


@pytest.mark.guest(vcpus=2, cmdline="thread_backlog_napi")
def test_flush_unregister_waits_for_a_busy_target_cpu(guest, kernel):
    """The hard case: CPU 1 (the RPS target) is held by a pinned SCHED_FIFO
    hog while the device is deleted.  Its backlog thread and flush work
    barely run (6.12's fair server lends them ~5%), so the deletion may
    wait; once the hog stops it completes promptly and nothing is left
    behind."""
    if kernel.version < (6, 10):
        pytest.skip(f"needs thread_backlog_napi (Linux >= 6.10); this kernel is {kernel.release}")
    pair = SteeredVeth(guest, target_cpu=1, sender_cpu=0).create()
    hog_s = 4.0
    try:
        hog = cpu_hog(guest, 1, hog_s)
        result = pair.send(3_000)  # queued on CPU 1, whose thread can hardly run
        t0 = time.monotonic()
        deleted = guest.run(f"ip link del {pair.tx}", timeout=60)
        took = time.monotonic() - t0
        hog.wait(30)
    finally:
        pair.delete()
    assert result.sent == 3_000
    assert deleted.rc == 0, deleted.stderr
    assert took < hog_s + DELETE_WITHIN_S, f"deleting took {took:.1f}s after the hog stopped"
    assert guest.run(f"test -e /sys/class/net/{pair.rx}").rc != 0
    assert queues_empty(guest)
