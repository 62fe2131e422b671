"""kmemleak in a guest: the objects no pointer reaches any more, collected
after each test so that a test's leaks fail that test as its splats do.

A kernel built with images/kconfig/kmemleak.config has
/sys/kernel/debug/kmemleak.  kmemleak reports an object only when it is
older than MSECS_MIN_AGE (5 s) and a scan found no reference to it, and
keeps reporting it until it is cleared.  So a collection waits until what
the test allocated last is old enough, scans, reads the report and clears
it: each leak is reported once, after the test that made it.

    leaks = parse_kmemleak(text)      # [Leak]; a report is untrusted bytes
    detector = Kmemleak(guest)
    detector.collect()                # wait 5 s, scan, read, clear: the new leaks
"""
from __future__ import annotations

import dataclasses
import re
import time

from ..util import HarnessError

KMEMLEAK = "/sys/kernel/debug/kmemleak"
MIN_AGE_S = 5.0  # mm/kmemleak.c: MSECS_MIN_AGE
_HEAD = re.compile(r"^unreferenced object (0x[0-9a-f]+) \(size (\d+)\):$")
_COMM = re.compile(r'^  comm "(.*)", pid (\d+), jiffies (\d+)$')
_FRAME = re.compile(r"^    (\S.*)$")
# frames of the allocator itself: a leak is named by the first frame below them
_ALLOCATOR = re.compile(r"^(kmem_cache_alloc|kmalloc|__kmalloc|kmemleak_|__alloc_pages|alloc_pages|slab_|"
                        r"__kmem_cache_alloc|kmalloc_reserve|kmalloc_trace|krealloc|kvmalloc|pcpu_|"
                        r"__do_kmalloc|___slab|__slab)")


class KmemleakError(HarnessError):
    pass


@dataclasses.dataclass(frozen=True)
class Leak:
    address: str
    size: int
    comm: str
    pid: int
    jiffies: int
    backtrace: tuple[str, ...]

    @property
    def allocated_by(self) -> str:
        """The first frame that is not the allocator's own."""
        fallback = self.backtrace[0] if self.backtrace else "?"
        return next((f for f in self.backtrace if not _ALLOCATOR.match(f)), fallback)

    def summary(self) -> str:
        return f"{self.size} bytes at {self.address} from {self.allocated_by} ({self.comm}, pid {self.pid})"


def parse_kmemleak(text: str) -> list[Leak]:
    """/sys/kernel/debug/kmemleak: per object a head line, the comm line, a
    hex dump and the backtrace.  A line that fits none of them is an error
    naming it (the report comes from the guest: untrusted)."""
    leaks: list[Leak] = []
    current: dict | None = None
    in_dump = False

    def close():
        if current is not None:
            if "comm" not in current:
                raise KmemleakError(f"kmemleak report: object {current['address']} has no comm line")
            leaks.append(Leak(current["address"], current["size"], current["comm"], current["pid"],
                              current["jiffies"], tuple(current["frames"])))

    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if m := _HEAD.match(line):
            close()
            current, in_dump = {"address": m.group(1), "size": int(m.group(2)), "frames": []}, False
            continue
        if current is None:
            raise KmemleakError(f"kmemleak report line {n}: expected 'unreferenced object ...', got {line[:200]!r}")
        if m := _COMM.match(line):
            current.update(comm=m.group(1), pid=int(m.group(2)), jiffies=int(m.group(3)))
        elif line.startswith("  hex dump"):
            in_dump = True
        elif line.startswith("  backtrace"):
            in_dump = False
        elif (m := _FRAME.match(line)) and not in_dump:
            current["frames"].append(m.group(1).strip())
        elif not in_dump:
            raise KmemleakError(f"kmemleak report line {n}: not part of an object's report: {line[:200]!r}")
    close()
    return leaks


class Kmemleak:
    """One guest's kmemleak, if its kernel has one."""

    def __init__(self, where):
        self.where = where
        probe = where.run(f"mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug; "
                          f"[ -w {KMEMLEAK} ]")
        self.available = probe.rc == 0

    def collect(self, *, waited: float = 0.0) -> list[Leak]:
        """The leaks reported since the last collection, once everything
        allocated before now is old enough to be reported (``waited``: the
        seconds the caller already let pass since then); then cleared."""
        if not self.available:
            return []
        if waited < MIN_AGE_S:
            time.sleep(MIN_AGE_S - waited)
        result = self.where.run(f"echo scan > {KMEMLEAK} && cat {KMEMLEAK} && echo clear > {KMEMLEAK}", timeout=600)
        if result.rc != 0:
            raise KmemleakError(f"kmemleak scan on {self.where!r}: {result.stderr.strip()[-300:]}")
        return parse_kmemleak(result.stdout)
