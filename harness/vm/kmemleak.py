"""kmemleak in a guest: the objects no pointer reaches any more, collected
after each test so that a test's leaks fail that test as its splats do.

A kernel built with images/kconfig/kmemleak.config has
/sys/kernel/debug/kmemleak.  kmemleak reports an object only when it is
older than MSECS_MIN_AGE (5 s), a scan found no reference to it, and its
checksum did not change since the scan before (a new object's always has,
once): so a collection waits until what the test allocated last is old
enough, scans twice, reads the report and clears it: each leak is
reported once, after the test that made it.

    leaks = parse_kmemleak(text)      # [Leak]; a report is untrusted bytes
    detector = Kmemleak(guest)
    count, first = detector.collect() # wait 5 s, scan twice, read, clear: the new leaks
"""
from __future__ import annotations

import dataclasses
import re
import time

from ..util import HarnessError

KMEMLEAK = "/sys/kernel/debug/kmemleak"
MIN_AGE_S = 5.0  # mm/kmemleak.c: MSECS_MIN_AGE
SHOWN = 50       # objects read back in full; the rest are counted
_COUNT = re.compile(r"^count (\d+)$")
_HEAD = re.compile(r"^unreferenced object (0x[0-9a-f]+) \(size (\d+)\):$")
_COMM = re.compile(r'^  comm "(.*)", pid (\d+), jiffies (\d+)$')
_HEX = re.compile(r"^    [0-9a-f]{2}( [0-9a-f]{2})*(  .*)?$")
_FRAME = re.compile(r"^    (?:\[<[0-9a-f]+>\] )?(\S+)$")  # before 6.6: "[<address>] symbol+off/size"
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
    part = ""  # "", "dump" or "backtrace": what the lines now belong to

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
            current, part = {"address": m.group(1), "size": int(m.group(2)), "frames": []}, ""
            continue
        if current is None:
            raise KmemleakError(f"kmemleak report line {n}: expected 'unreferenced object ...', got {line[:200]!r}")
        if m := _COMM.match(line):
            current.update(comm=m.group(1), pid=int(m.group(2)), jiffies=int(m.group(3)))
        elif line.startswith("  hex dump"):
            part = "dump"
        elif line.startswith("  backtrace"):
            part = "backtrace"
        elif part == "dump" and _HEX.match(line):
            pass
        elif part == "backtrace" and (m := _FRAME.match(line)):
            current["frames"].append(m.group(1))
        else:
            raise KmemleakError(f"kmemleak report line {n}: not part of an object's report: {line[:200]!r}")
    close()
    return leaks


def parse_collection(text: str) -> tuple[int, list[Leak]]:
    """What ``Kmemleak.collect`` reads: "count N", then the first objects."""
    first, _, rest = text.partition("\n")
    m = _COUNT.match(first)
    if not m:
        raise KmemleakError(f"kmemleak collection: expected 'count N' first, got {first[:200]!r}")
    return int(m.group(1)), parse_kmemleak(rest)


class Kmemleak:
    """One guest's kmemleak, if its kernel has one."""

    def __init__(self, where):
        self.where = where
        probe = where.run(f"mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug; "
                          f"[ -w {KMEMLEAK} ]")
        self.available = probe.rc == 0

    def collect(self, *, waited: float = 0.0) -> tuple[int, list[Leak]]:
        """The leaks reported since the last collection, once everything
        allocated before now is old enough to be reported (``waited``: the
        seconds the caller already let pass since then), then cleared: how
        many, and the first SHOWN of them."""
        if not self.available:
            return 0, []
        if waited < MIN_AGE_S:
            time.sleep(MIN_AGE_S - waited)
        f = KMEMLEAK
        result = self.where.run(f"echo scan > {f} && echo scan > {f} && echo count $(grep -c '^unreferenced' {f}) && "
                                f"awk '/^unreferenced/ {{ n++ }} n <= {SHOWN}' {f} && echo clear > {f}", timeout=600)
        if result.rc != 0:
            raise KmemleakError(f"kmemleak scan on {self.where!r}: {result.stderr.strip()[-300:]}")
        return parse_collection(result.stdout)
