"""threaded_backlog: backlog processing in kernel threads (seed 002 and its
upstream successor).

Upstream (Linux >= 6.10): booted with ``thread_backlog_napi`` every CPU has a
``backlog_napi/N`` thread bound to CPU N that processes its backlog; RPS then
needs no IPI.  Seed 002 (``net.core.backlog_threaded``, threads
``napi/backlog-N``): the same, switched at run time.

Traffic: pktgen on CPU 0 into a veth pair whose receiving end steers every
packet to CPU 1's backlog (harness.rps).  Exact accounting: every packet sent
is processed or dropped, and nothing else is received.
"""
import pytest

from harness.observe import parse_cpu_list, snapshot
from harness.rps import SteeredVeth

N = 20_000
SYSCTL = "/proc/sys/net/core/backlog_threaded"
SEED_002 = ("build a kernel carrying seed 002: tools/build-kernel --debian-source 6.1 "
            "--patch images/patches/0001-net-core-add-optional-threading-for-backlog-processing.patch")


def needs_boot_parameter(kernel):
    if kernel.version < (6, 10):
        pytest.skip(f"thread_backlog_napi needs Linux >= 6.10; this kernel is {kernel.release}")


def needs_sysctl(guest):
    if guest.run(f"test -e {SYSCTL}").rc != 0:
        pytest.skip(f"kernel {guest.release} has no net.core.backlog_threaded (seed 002); {SEED_002}")


@pytest.fixture
def steered(guest):
    pair = SteeredVeth(guest, target_cpu=1, sender_cpu=0).create()
    yield pair
    pair.delete()


def assert_all_accounted(result, delta):
    """pktgen's sent packets were all processed; the ones veth could not
    queue (NET_XMIT_DROP, pktgen's errors) are softnet's drops."""
    processed = sum(row.processed for row in delta.softnet.values())
    dropped = sum(row.dropped for row in delta.softnet.values())
    assert (processed, dropped) == (result.sent, result.errors), \
        f"pktgen sent {result.sent} (errors {result.errors}); processed {processed}, dropped {dropped}"


# -- upstream boot parameter ------------------------------------------------

@pytest.mark.guest(vcpus=2, cmdline="thread_backlog_napi")
def test_threaded_backlog_boot_parameter_gives_one_bound_thread_per_cpu(guest, kernel):
    needs_boot_parameter(kernel)
    threads = snapshot(guest).threads("backlog_napi/*")
    assert [(t.name, t.cpus) for t in threads] == [("backlog_napi/0", {0}), ("backlog_napi/1", {1})]


@pytest.mark.guest(vcpus=2)
def test_threaded_backlog_absent_without_boot_parameter(guest, kernel):
    needs_boot_parameter(kernel)
    assert snapshot(guest).threads("backlog_napi/*") == []


@pytest.mark.guest(vcpus=2, cmdline="thread_backlog_napi")
def test_threaded_backlog_rps_is_processed_by_the_target_cpus_thread(guest, kernel, steered):
    """RPS to CPU 1 in threaded mode: CPU 1 processes every packet and takes
    no RPS IPI (received_rps stays 0)."""
    needs_boot_parameter(kernel)
    before = snapshot(guest)
    result = steered.send(N)
    d = snapshot(guest) - before
    assert result.sent == N
    assert d.softnet[1].processed == N
    assert d.softnet[0].processed == 0
    assert d.softnet[1].received_rps == 0
    assert_all_accounted(result, d)


@pytest.mark.guest(vcpus=2)
def test_threaded_backlog_off_rps_raises_ipis(guest, kernel, steered):
    """The same traffic in softirq mode: CPU 1 processes it, woken by RPS IPIs."""
    before = snapshot(guest)
    result = steered.send(N)
    d = snapshot(guest) - before
    assert d.softnet[1].processed == result.sent == N
    assert d.softnet[1].received_rps > 0
    assert_all_accounted(result, d)


# -- seed 002: net.core.backlog_threaded -----------------------------------

def backlog_threads(guest):
    return snapshot(guest, threads=("napi/backlog-*",)).threads("napi/backlog-*")


def set_threaded(guest, value: int):
    guest.check(f"echo {value} > {SYSCTL}")


@pytest.mark.guest(vcpus=2)
def test_threaded_backlog_sysctl_creates_one_thread_per_cpu(guest):
    needs_sysctl(guest)
    set_threaded(guest, 0)
    possible = guest.check("cat /sys/devices/system/cpu/possible").stdout.strip()
    set_threaded(guest, 1)
    try:
        names = sorted(t.name for t in backlog_threads(guest))
        assert names == sorted(f"napi/backlog-{n}" for n in parse_cpu_list(possible))
    finally:
        set_threaded(guest, 0)


@pytest.mark.guest(vcpus=2)
def test_threaded_backlog_sysctl_rps_goes_through_the_threads(guest, steered):
    """With backlog_threaded=1 no RPS IPI is raised and every packet is processed."""
    needs_sysctl(guest)
    set_threaded(guest, 1)
    try:
        before = snapshot(guest)
        result = steered.send(N)
        d = snapshot(guest) - before
    finally:
        set_threaded(guest, 0)
    assert result.sent == N
    assert sum(row.received_rps for row in d.softnet.values()) == 0
    assert_all_accounted(result, d)


@pytest.mark.guest(vcpus=2)
def test_threaded_backlog_sysctl_toggled_under_traffic(guest, steered):
    """1 -> 0 -> 1 fifty times while RPS traffic flows: no splat (the plugin
    fails the test on one), no stall, no unaccounted packet, no thread leak."""
    needs_sysctl(guest)
    ncpu = int(guest.check("nproc").stdout)
    before = snapshot(guest)
    run = steered.start(200_000, rate_pps=50_000)
    toggles = guest.run(f"for i in $(seq 50); do echo 1 > {SYSCTL}; echo 0 > {SYSCTL}; done; "
                        f"echo 1 > {SYSCTL}", timeout=60)
    result = run.wait(timeout=120)
    d = snapshot(guest) - before
    set_threaded(guest, 0)
    assert toggles.rc == 0, toggles.stderr
    assert result.sent == 200_000
    assert_all_accounted(result, d)
    assert len(backlog_threads(guest)) == ncpu


def test_threaded_backlog_sysctl_first_thing_after_boot(make_guest):
    """v1 of the patch broke switching backlogs that were never scheduled
    (poll_list uninitialised): switch before any packet, then steer traffic."""
    fresh = make_guest("fresh", vcpus=2)
    needs_sysctl(fresh)
    set_threaded(fresh, 1)
    pair = SteeredVeth(fresh, target_cpu=1, sender_cpu=0).create()
    before = snapshot(fresh)
    result = pair.send(N)
    d = snapshot(fresh) - before
    assert result.sent == N
    assert_all_accounted(result, d)
