"""threaded_backlog: backlog processing in kernel threads (seed 002 and its
upstream successor).

Upstream (Linux >= 6.10): booted with ``thread_backlog_napi`` every CPU has a
``backlog_napi/N`` thread bound to CPU N that processes its backlog; RPS then
needs no IPI.  Seed 002 (``net.core.backlog_threaded``, threads
``napi/backlog-N``): the same, switched at run time.

Traffic: pktgen on CPU 0 into a veth pair whose receiving end steers every
packet to CPU 1's backlog (harness.measure.rps).  Exact accounting: every packet sent
is processed or dropped, and nothing else is received.
"""
import pytest

import time

from harness.measure.backlog import (BACKLOG_NAPI, SEED_002, SEED_002_HINT, SYSCTL, backlog_mode, backlog_thread,
                                     backlog_threaded, backlog_threads, has_backlog_sysctl, hold_mid_round,
                                     max_backlog, pin, set_backlog_threaded)
from harness.measure.observe import parse_cpu_list, snapshot, softnet
from harness.measure.rps import CpuHog, SteeredVeth
from harness.vocab import column, counting, delta, total

N = 20_000
pytestmark = pytest.mark.needs(SteeredVeth.NEEDS)


def needs_sysctl(guest):
    if not has_backlog_sysctl(guest):
        pytest.skip(f"needs net.core.backlog_threaded (seed 002): kernel {guest.release} has none; {SEED_002_HINT}")


@pytest.fixture
def steered(guest):
    pair = SteeredVeth(guest, target_cpu=1, sender_cpu=0).create()
    yield pair
    pair.delete()


def assert_all_accounted(result, delta):
    """pktgen's sent packets were all processed; the ones veth could not
    queue (NET_XMIT_DROP, pktgen's errors) are softnet's drops."""
    processed, dropped = total(delta.softnet, "processed"), total(delta.softnet, "dropped")
    assert (processed, dropped) == (result.sent, result.errors), \
        f"pktgen sent {result.sent} (errors {result.errors}); processed {processed}, dropped {dropped}"


# -- upstream boot parameter ------------------------------------------------

@pytest.mark.needs(BACKLOG_NAPI)
@pytest.mark.guest(vcpus=2, cmdline="thread_backlog_napi")
def test_threaded_backlog_boot_parameter_gives_one_bound_thread_per_cpu(guest):
    threads = snapshot(guest).threads("backlog_napi/*")
    assert [(t.name, t.cpus) for t in threads] == [("backlog_napi/0", {0}), ("backlog_napi/1", {1})]


@pytest.mark.needs(BACKLOG_NAPI)
@pytest.mark.guest(vcpus=2)
def test_threaded_backlog_absent_without_boot_parameter(guest):
    assert snapshot(guest).threads("backlog_napi/*") == []


@pytest.mark.needs(BACKLOG_NAPI)
@pytest.mark.guest(vcpus=2, cmdline="thread_backlog_napi")
def test_threaded_backlog_rps_is_processed_by_the_target_cpus_thread(guest, steered):
    """RPS to CPU 1 in threaded mode: CPU 1 processes every packet and takes
    no RPS IPI (received_rps stays 0)."""
    with counting(guest) as d:
        result = steered.send(N)
    assert result.sent == N
    assert d.softnet[1].processed == N
    assert d.softnet[0].processed == 0
    assert d.softnet[1].received_rps == 0
    assert_all_accounted(result, d)


@pytest.mark.guest(vcpus=2)
def test_threaded_backlog_off_rps_raises_ipis(guest, kernel, steered):
    """The same traffic in softirq mode: CPU 1 processes it, woken by RPS IPIs."""
    with counting(guest) as d:
        result = steered.send(N)
    assert d.softnet[1].processed == result.sent == N
    assert d.softnet[1].received_rps > 0
    assert_all_accounted(result, d)


# -- seed 002: net.core.backlog_threaded -----------------------------------

def seed_threads(guest):
    return sorted(t.name for t in backlog_threads(guest) if t.name.startswith("napi/backlog-"))


def possible_cpus(guest):
    return parse_cpu_list(guest.check("cat /sys/devices/system/cpu/possible").stdout)


@pytest.mark.needs(SEED_002)
@pytest.mark.guest(vcpus=2)
def test_threaded_backlog_sysctl_creates_one_thread_per_cpu(guest):
    set_backlog_threaded(guest, 0)
    with backlog_threaded(guest):
        assert seed_threads(guest) == sorted(f"napi/backlog-{n}" for n in possible_cpus(guest))


@pytest.mark.needs(SEED_002)
@pytest.mark.guest(vcpus=2)
def test_threaded_backlog_sysctl_rps_goes_through_the_threads(guest, steered):
    """With backlog_threaded=1 no RPS IPI is raised and every packet is processed."""
    with backlog_threaded(guest):
        with counting(guest) as d:
            result = steered.send(N)
    assert result.sent == N
    assert sum(row.received_rps for row in d.softnet.values()) == 0
    assert_all_accounted(result, d)


@pytest.mark.needs(SEED_002)
@pytest.mark.guest(vcpus=2)
def test_threaded_backlog_sysctl_off_brings_the_ipis_back(guest, steered):
    """1 then 0: the backlogs are softirq-driven again; RPS to CPU 1 raises
    IPIs and CPU 1 processes every packet in its softirq."""
    with backlog_threaded(guest):
        steered.send(1_000)
    with counting(guest) as d:
        result = steered.send(N)
    assert d.softnet[1].processed == result.sent == N
    assert d.softnet[1].received_rps > 0
    assert_all_accounted(result, d)


@pytest.mark.needs(SEED_002)
@pytest.mark.guest(vcpus=3)
def test_threaded_backlog_sysctl_off_while_a_thread_owns_the_backlog(guest, defer):
    """1 -> 0 while CPU 1's backlog thread is preempted mid-round (pinned to
    CPU 2, held there by a hog, owning a non-empty process_queue): the
    backlog stays the thread's until it completes its round.  No softirq
    touches it meanwhile (it would race the thread over process_queue),
    not even for packets that arrive after the switch; once released, the
    thread processes every packet, old and new, exactly once."""
    n, more = 3_000, 500
    pair = SteeredVeth(guest, target_cpu=1, sender_cpu=0).create()
    defer(pair.delete)
    with max_backlog(guest, 10_000), backlog_threaded(guest):
        pin(guest, backlog_thread(guest, 1).pid, 2)
        with CpuHog(guest, cpu=2, seconds=120) as hog:
            done, before = hold_mid_round(guest, pair, hog, n)
            set_backlog_threaded(guest, 0)
            assert pair.inject(more) == (more, 0)
            time.sleep(1.0)
            meanwhile = column(delta(before, softnet(guest)), "processed")
            assert meanwhile == {0: 0, 1: 0, 2: done}, \
                f"the backlog was processed while its thread still owned it: {meanwhile}"
        after = drained(guest, before, n + more)
    processed = column(delta(before, after), "processed")
    assert processed == {0: 0, 1: 0, 2: n + more}, f"every packet once, by the thread: {processed}"
    assert total(delta(before, after), "dropped") == 0


@pytest.mark.needs(SEED_002)
@pytest.mark.guest(vcpus=2)
def test_threaded_backlog_sysctl_toggled_under_traffic(guest, steered):
    """1 -> 0 -> 1 fifty times while RPS traffic flows: no splat (the plugin
    fails the test on one), no stall, no unaccounted packet, no thread leak."""
    with counting(guest) as d:
        run = steered.start(200_000, rate_pps=50_000)
        toggles = guest.run(f"for i in $(seq 50); do echo 1 > {SYSCTL}; echo 0 > {SYSCTL}; done; "
                            f"echo 1 > {SYSCTL}", timeout=60)
        result = run.wait(timeout=120)
    set_backlog_threaded(guest, 0)
    assert toggles.rc == 0, toggles.stderr
    assert result.sent == 200_000
    assert_all_accounted(result, d)
    assert seed_threads(guest) == sorted(f"napi/backlog-{n}" for n in possible_cpus(guest))


@pytest.mark.needs(SEED_002)
def test_threaded_backlog_sysctl_first_thing_after_boot(make_guest):
    """v1 of the patch broke switching backlogs that were never scheduled
    (poll_list uninitialised): switch before any packet, then steer
    traffic.  Writing 0 to a kernel that never threaded creates nothing."""
    fresh = make_guest("fresh", vcpus=2)
    needs_sysctl(fresh)
    # one write(2) of "0\n": the whole of it is taken, and nothing starts
    written = fresh.check(f"python3 -c \"import os; print(os.write(os.open('{SYSCTL}', os.O_WRONLY), b'0\\n'))\"")
    assert written.stdout.strip() == "2", "writing the current value (0) was not taken whole"
    assert seed_threads(fresh) == [], "writing the current value (0) started threads"
    set_backlog_threaded(fresh, 1)
    pair = SteeredVeth(fresh, target_cpu=1, sender_cpu=0).create()
    with counting(fresh) as d:
        result = pair.send(N)
    assert result.sent == N
    assert sum(row.received_rps for row in d.softnet.values()) == 0
    assert_all_accounted(result, d)


def refused_enable(guest):
    """Write 1 while no task may be created (kernel.threads-max=1): the
    backlog threads cannot start.  Only shell builtins run meanwhile."""
    return guest.run(f"old=$(cat /proc/sys/kernel/threads-max); echo 1 > /proc/sys/kernel/threads-max; "
                     f"echo 1 > {SYSCTL}; rc=$?; echo $old > /proc/sys/kernel/threads-max; exit $rc")


@pytest.mark.needs(SEED_002)
def test_threaded_backlog_sysctl_refused_enable_leaves_softirq_mode(make_guest):
    """When a backlog thread cannot be created the switch is refused with an
    error and logged; the backlogs stay softirq-driven (RPS raises IPIs,
    CPU 1 processes every packet), no thread is left half-made, and a later
    switch, once threads can be created, starts one thread per CPU."""
    fresh = make_guest("refused", vcpus=2)
    needs_sysctl(fresh)
    start = len(fresh.console)
    refused = refused_enable(fresh)
    assert refused.rc != 0, "the switch succeeded without its threads"
    fresh.mark()
    assert "kthread_run failed with err -11" in fresh.console.text(start), "the failure was not logged"
    assert seed_threads(fresh) == []
    pair = SteeredVeth(fresh, target_cpu=1, sender_cpu=0).create()
    with counting(fresh) as d:
        result = pair.send(N)
    assert d.softnet[1].processed == result.sent == N
    assert d.softnet[1].received_rps > 0
    assert_all_accounted(result, d)
    set_backlog_threaded(fresh, 1)
    assert seed_threads(fresh) == sorted(f"napi/backlog-{n}" for n in possible_cpus(fresh))
    with counting(fresh) as d:
        result = pair.send(N)
    assert sum(row.received_rps for row in d.softnet.values()) == 0
    assert_all_accounted(result, d)


@pytest.mark.xfail(strict=True, reason="seed 002 v2 bug: proc_dointvec_minmax() stores 1 before "
                                       "backlog_set_threaded() fails, and nothing puts 0 back")
@pytest.mark.needs(SEED_002)
def test_threaded_backlog_sysctl_reads_back_the_mode_after_a_refused_enable(make_guest):
    fresh = make_guest("readback", vcpus=2)
    needs_sysctl(fresh)
    assert refused_enable(fresh).rc != 0
    assert fresh.check(f"cat {SYSCTL}").stdout.strip() == "0"


# -- seed 002 and CPU hotplug (dev_cpu_dead) ------------------------------------

def set_online(guest, cpu: int, online: int):
    # from CPU 0: dev_cpu_dead() runs on the CPU that takes the other down
    guest.check(f"taskset -c 0 sh -c 'echo {online} > /sys/devices/system/cpu/cpu{cpu}/online'", timeout=60)


def drained(guest, before, want, timeout=20.0):
    """softnet once processed + dropped over every CPU reach ``want``."""
    deadline = time.monotonic() + timeout * guest.time_scale
    while True:
        rows = softnet(guest)
        got = total(delta(before, rows), "processed", "dropped")
        if got >= want or time.monotonic() > deadline:
            time.sleep(0.3)  # anything beyond what was sent would show now
            return softnet(guest)
        time.sleep(0.1)


@pytest.mark.needs("CONFIG_HOTPLUG_CPU")
@pytest.mark.parametrize("mode", ["softirq", pytest.param("backlog_threaded", marks=pytest.mark.needs(SEED_002))])
@pytest.mark.guest(vcpus=3)
def test_threaded_backlog_hotplug_rps_target_under_traffic(guest, mode, defer):
    """CPU 1, the RPS target, goes offline and back online three times while
    pktgen floods it.  Every packet is processed or dropped, each counted
    once: what the dead CPU had queued is moved to a live CPU (softirq) or
    drained by its thread (threaded), and once the CPU is back its backlog
    runs again."""
    pair = SteeredVeth(guest, target_cpu=1, sender_cpu=0).create()
    defer(pair.delete)
    with backlog_mode(guest, mode):
        try:
            before = softnet(guest)
            run = pair.start(300_000)
            time.sleep(1.0)
            for _ in range(3):
                set_online(guest, 1, 0)
                time.sleep(0.3)
                set_online(guest, 1, 1)
                time.sleep(0.3)
            result = run.wait(180)
            after = drained(guest, before, result.sent + result.errors)
        finally:  # before the mode switches back: every CPU online
            guest.run("echo 1 > /sys/devices/system/cpu/cpu1/online")
    processed, dropped = total(delta(before, after), "processed"), total(delta(before, after), "dropped")
    assert processed + dropped == result.sent + result.errors, \
        f"pktgen: {result.sent} sent, {result.errors} refused; softnet: {processed} processed, {dropped} dropped"
    assert after[1].backlog_len == 0


@pytest.mark.needs(SEED_002, "CONFIG_HOTPLUG_CPU")
@pytest.mark.guest(vcpus=3)
def test_threaded_backlog_hotplug_dead_cpus_backlog_is_left_to_its_thread(guest):
    """Seed 002's dev_cpu_dead() hunk: a threaded backlog of a CPU that goes
    offline stays with its thread.  CPU 1's thread (pinned to CPU 2, held
    there by a hog) has 3000 packets queued when CPU 1 dies: nothing is
    re-injected elsewhere (nothing is processed while the thread is held),
    and once released the thread processes all 3000 on CPU 2."""
    n = 3_000
    pair = SteeredVeth(guest, target_cpu=1, sender_cpu=0).create()
    try:
        with max_backlog(guest, 10_000), backlog_threaded(guest):
            pin(guest, backlog_thread(guest, 1).pid, 2)
            pin(guest, backlog_thread(guest, 0).pid, 0)
            with CpuHog(guest, cpu=2, seconds=120):
                before = softnet(guest)
                assert pair.inject(n) == (n, 0)
                assert softnet(guest)[1].backlog_len == n, "the packets are not all queued on CPU 1"
                set_online(guest, 1, 0)
                time.sleep(1.0)
                held = softnet(guest)
                moved = column(delta(before, held), "processed")
                assert moved == {0: 0, 2: 0}, f"the dead CPU's packets were processed elsewhere: {moved}"
            after = drained(guest, before, n)
            set_online(guest, 1, 1)
    finally:
        guest.run("echo 1 > /sys/devices/system/cpu/cpu1/online")
        pair.delete()
    processed = column(delta(before, after), "processed")
    assert processed == {0: 0, 2: n}, f"CPU 1's thread (on CPU 2) processes every packet: {processed}"
    assert total(delta(before, after), "dropped") == 0
