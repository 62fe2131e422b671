"""Backlog threads in a guest: seed 002's run-time switch
(``net.core.backlog_threaded``, threads ``napi/backlog-N``) and upstream's
boot parameter (``thread_backlog_napi``, threads ``backlog_napi/N``).

    if not has_backlog_sysctl(guest): pytest.skip(...)
    with backlog_threaded(guest):           # 1 inside, 0 after
        thread = backlog_thread(guest, 1)   # KThread of CPU 1's backlog
        pin(guest, thread.pid, 2)           # it polls CPU 1's backlog from CPU 2
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..endpoint import Endpoint
from ..kernel.needs import Feature, Version
from .observe import KThread, SoftnetRow, snapshot, softnet

if TYPE_CHECKING:
    from .rps import CpuHog, SteeredVeth

SYSCTL = "/proc/sys/net/core/backlog_threaded"
SEED_002_PATCH = "images/patches/0001-net-core-add-optional-threading-for-backlog-processing.patch"
SEED_002_HINT = f"build a kernel carrying seed 002: tools/build-kernel --debian-source 6.1 --patch {SEED_002_PATCH}"
THREAD_NAMES = ("napi/backlog-*", "backlog_napi/*")
# seed 002's sysctl, asked of a booted guest (no config option names it)
SEED_002 = Feature("net.core.backlog_threaded (seed 002)", f"test -e {SYSCTL}", SEED_002_HINT)
# upstream's backlog threads (thread_backlog_napi on the command line)
BACKLOG_NAPI = Version((6, 10), "thread_backlog_napi")


def has_backlog_sysctl(where) -> bool:
    return where.run(f"test -e {SYSCTL}").rc == 0


def set_backlog_threaded(where: Endpoint, value: int) -> None:
    where.check(f"echo {value} > {SYSCTL}")


@contextlib.contextmanager
def backlog_threaded(where: Endpoint) -> Iterator[None]:
    """net.core.backlog_threaded=1 for the block, 0 after it."""
    set_backlog_threaded(where, 1)
    try:
        yield
    finally:
        set_backlog_threaded(where, 0)


MODES = ("softirq", "backlog_threaded")  # how the backlogs are processed


@contextlib.contextmanager
def backlog_mode(where: Endpoint, mode: str) -> Iterator[None]:
    """The backlogs processed in ``mode`` for the block: "softirq" (the
    kernel's own default: nothing is switched) or "backlog_threaded"
    (seed 002's sysctl: 1 for the block, 0 after it)."""
    if mode not in MODES:
        raise ValueError(f"backlog mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "softirq":
        yield
        return
    with backlog_threaded(where):
        yield


@contextlib.contextmanager
def max_backlog(where: Endpoint, packets: int) -> Iterator[None]:
    """net.core.netdev_max_backlog=packets for the block, the old value after."""
    old = where.check("sysctl -n net.core.netdev_max_backlog").stdout.strip()
    where.check(f"sysctl -qw net.core.netdev_max_backlog={packets}")
    try:
        yield
    finally:
        where.check(f"sysctl -qw net.core.netdev_max_backlog={old}")


def backlog_threads(where) -> list[KThread]:
    return [t for t in snapshot(where, threads=THREAD_NAMES).kthreads]


def backlog_thread(where, cpu: int) -> KThread:
    """The thread that processes CPU ``cpu``'s backlog (either naming)."""
    names = {f"napi/backlog-{cpu}", f"backlog_napi/{cpu}"}
    found = [t for t in backlog_threads(where) if t.name in names]
    if len(found) != 1:
        raise AssertionError(f"expected one backlog thread for CPU {cpu}, found {found}")
    return found[0]


def hold_mid_round(where: Endpoint, pair: SteeredVeth, hog: CpuHog, n: int, thread_cpu: int = 2,
                   target_cpu: int = 1) -> tuple[int, dict[int, SoftnetRow]]:
    """Leave CPU ``target_cpu``'s backlog thread (pinned to the hogged CPU
    ``thread_cpu``) preempted in the middle of a round, owning a non-empty
    process_queue: queue ``n`` packets while it cannot run, then pulse the
    hog until it has run a little (it splices the whole input queue into
    process_queue, processes some, and is preempted at a quota boundary).
    Checked, not hoped for: returns (packets processed so far, softnet
    before the packets were sent), and process_queue then holds exactly
    n - processed packets."""
    before = softnet(where)
    sent = pair.inject(n)
    assert sent == (n, 0), f"{sent[1]} of {n} packets were refused"
    rows = softnet(where)
    assert rows[target_cpu].backlog_len == n, \
        f"expected {n} queued on CPU {target_cpu} with its thread held: {rows[target_cpu]}"
    done = 0
    for _ in range(10):
        hog.pulse()
        time.sleep(0.3)
        rows = softnet(where)
        done = rows[thread_cpu].processed - before[thread_cpu].processed
        if done:
            break
    assert 0 < done < n, f"the thread processed {done} of {n} packets during the pulses"
    assert rows[target_cpu].backlog_len == n - done, f"{rows[target_cpu]} after {done} processed"
    return done, before


def pin(where: Endpoint, pid: int, cpu: int) -> None:
    """Restrict a task (a kernel thread too, unless it is bound) to one CPU."""
    where.check(f"taskset -pc {cpu} {pid} >/dev/null")
