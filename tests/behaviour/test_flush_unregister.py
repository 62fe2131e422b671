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

from harness.measure.backlog import (BACKLOG_NAPI, SEED_002, backlog_mode, backlog_thread, backlog_threaded,
                                     hold_mid_round, max_backlog, pin)
from harness.vm.console import GuestError
from harness.measure.observe import cpu_times, snapshot, softnet
from harness.measure.rps import CpuHog, SteeredVeth
from harness.vocab import column, delta, exists, total, wait_gone

DELETE_WITHIN_S = 10.0  # under TCG
pytestmark = pytest.mark.needs(SteeredVeth, "CONFIG_NET_NS")


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
            wait_gone(guest, pair.tx, timeout=60 * guest.time_scale)
        else:
            guest.check(f"ip link del {pair.tx}", timeout=60)
        took = time.monotonic() - t0
        run.job.wait(60)  # pktgen stops by itself once its device is gone
    finally:
        run.stop()
        pair.delete()
    return took


@pytest.mark.parametrize("in_namespace", [False, True], ids=["device", "namespace"])
@pytest.mark.parametrize("mode", ["softirq", pytest.param("backlog_threaded", marks=pytest.mark.needs(SEED_002))])
@pytest.mark.guest(vcpus=2)
def test_flush_unregister_under_rps_traffic(guest, mode, in_namespace):
    with backlog_mode(guest, mode):
        took = delete_under_traffic(guest, in_namespace=in_namespace)
    assert took < DELETE_WITHIN_S * guest.time_scale, f"deleting took {took:.1f}s"
    assert queues_empty(guest)


@pytest.mark.needs(BACKLOG_NAPI)
@pytest.mark.parametrize("in_namespace", [False, True], ids=["device", "namespace"])
@pytest.mark.guest(vcpus=2, cmdline="thread_backlog_napi")
def test_flush_unregister_under_rps_traffic_backlog_threads(guest, in_namespace):
    took = delete_under_traffic(guest, in_namespace=in_namespace)
    assert took < DELETE_WITHIN_S * guest.time_scale, f"deleting took {took:.1f}s"
    assert queues_empty(guest)


@pytest.mark.needs(BACKLOG_NAPI)
@pytest.mark.guest(vcpus=2, cmdline="thread_backlog_napi")
def test_flush_unregister_waits_for_a_busy_target_cpu(guest):
    """The hard case: CPU 1 (the RPS target) is held by a pinned SCHED_FIFO
    hog while the device is deleted.  Its backlog thread and flush work
    barely run (6.12's fair server lends them ~5%), so the deletion may
    wait; once the hog stops it completes promptly and nothing is left
    behind."""
    pair = SteeredVeth(guest, target_cpu=1, sender_cpu=0).create()
    hog_s = 4.0
    try:
        hog = CpuHog(guest, 1, hog_s).start()
        result = pair.send(3_000)  # queued on CPU 1, whose thread can hardly run
        t0 = time.monotonic()
        deleted = guest.run(f"ip link del {pair.tx}", timeout=60)
        took = time.monotonic() - t0
        hog.wait(30)
    finally:
        pair.delete()
    assert result.sent == 3_000
    assert deleted.rc == 0, deleted.stderr
    assert took < hog_s + DELETE_WITHIN_S * guest.time_scale, f"deleting took {took:.1f}s after the hog stopped"
    assert not exists(guest, pair.rx)
    assert queues_empty(guest)


# -- seed 002's handshake: a backlog thread that owns process_queue ----------

HELD_N = 5_000  # fits netdev_max_backlog (raised to 10000 here): nothing is dropped


@pytest.mark.needs(SEED_002)
@pytest.mark.parametrize("in_namespace", [False, True], ids=["device", "namespace"])
@pytest.mark.guest(vcpus=3)
def test_flush_unregister_waits_for_a_held_backlog_thread(guest, in_namespace):
    """Seed 002, threaded: CPU 1's backlog thread (pinned to CPU 2, held off
    it by a SCHED_FIFO hog) owns a non-empty process_queue when the device,
    or its namespace, is unregistered.  flush_backlog() leaves process_queue
    to the thread and waits for it (process_queue_empty): the deletion does
    not complete while the thread is held, the flushing CPU sleeps
    meanwhile (it does not spin), and once the thread runs it processes
    every queued packet exactly, none freed under it; then the deletion
    completes and every queue is empty."""
    pair = SteeredVeth(guest, target_cpu=1, sender_cpu=0, netns="heldns" if in_namespace else None).create()
    deletion = None
    try:
        with max_backlog(guest, 10_000), backlog_threaded(guest):
            pin(guest, backlog_thread(guest, 1).pid, 2)
            with CpuHog(guest, cpu=2, seconds=120, pulse_us=1000) as hog:
                done, before = hold_mid_round(guest, pair, hog, HELD_N)
                busy_before = cpu_times(guest)
                deletion = guest.spawn(f"ip netns del {pair.netns}" if in_namespace else f"ip link del {pair.tx}")
                time.sleep(2.0)
                still_there = exists(guest, pair.tx)
                flushing_cpu = (cpu_times(guest)[1] - busy_before[1]).busy_fraction
                rows = softnet(guest)
                assert still_there, "the device went while its packets were still queued for the held thread"
                assert delta(before, rows)[2].processed == done, "the held thread ran"
                assert flushing_cpu < 0.5, f"CPU 1 was {flushing_cpu:.0%} busy while the unregister waited"
            # the hog is gone: the thread finishes its round, the unregister completes
            t0 = time.monotonic()
            assert deletion.wait(DELETE_WITHIN_S).rc == 0
            wait_gone(guest, pair.tx, timeout=DELETE_WITHIN_S * guest.time_scale - (time.monotonic() - t0))
            assert not exists(guest, pair.tx), "the device is still there after the release"
            after = softnet(guest)
    finally:
        stuck = False
        if deletion is not None and deletion.running:
            try:
                deletion.wait(DELETE_WITHIN_S)
            except GuestError:
                stuck = True  # the unregister is stuck in the kernel, holding rtnl: no cleanup can run
        if not stuck:
            pair.delete()
    processed = column(delta(before, after), "processed")
    assert processed[2] == HELD_N and sum(processed.values()) == HELD_N, \
        f"every queued packet is processed by the thread (on CPU 2), none is freed under it: {processed}"
    assert total(delta(before, after), "dropped") == 0
    assert all(row.backlog_len == 0 for row in after.values())
