"""Slab accounting: objects per kmem cache (/proc/slabinfo), read after a
drain, and the slack a cache may hold for reasons other than a leak,
derived from the cache's own geometry (SLUB's /sys/kernel/slab).

    before = drained_slabs(guest, SKB_CACHES)
    ...workload...
    after = drained_slabs(guest, SKB_CACHES)
    grown = after - before                      # {cache: objects}
    grown.within(slack(guest, SKB_CACHES))      # [] when nothing leaked
    leaks(guest, before)                        # the same, drained and compared in one call

SLUB's slabinfo counts the free objects of each CPU's slabs as active, and
the NAPI skb cache holds up to 64 skbs per CPU on purpose: a cache's count
moves by that much with no leak.  ``slack`` is that bound, per cache and
CPU: the CPU's own slab and its partial slabs (SLUB keeps up to twice
``cpu_partial`` objects' worth of them, rounded up to slabs), plus the NAPI
cache for skbuff_head_cache.  A leak of one skb per packet over a
workload of many thousand packets is far beyond it.
"""
from __future__ import annotations

import dataclasses
import re

from ..util import HarnessError

# The skb caches (skbuff_small_head exists from 6.5; a missing one is left out)
SKB_CACHES = ("skbuff_head_cache", "skbuff_fclone_cache", "skbuff_small_head")
NAPI_SKB_CACHE_SIZE = 64  # net/core/skbuff.c: skbs each CPU's NAPI cache holds
_NAME = re.compile(r"^[\w.:-]+$")


class SlabError(HarnessError):
    pass


@dataclasses.dataclass(frozen=True)
class SlabCache:
    name: str
    active_objs: int
    num_objs: int
    objsize: int


def parse_slabinfo(text: str) -> dict[str, SlabCache]:
    """/proc/slabinfo (version 2.1): name, active_objs, num_objs, objsize, ..."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("slabinfo - version: 2."):
        raise SlabError(f"/proc/slabinfo: expected 'slabinfo - version: 2.x' first, got {lines[:1]!r}")
    out = {}
    for n, line in enumerate(lines[1:], 2):
        if line.startswith("#") or not line.strip():
            continue
        fields = line.split()
        if len(fields) < 4 or not all(f.isdigit() for f in fields[1:4]):
            raise SlabError(f"/proc/slabinfo line {n}: expected 'name active num objsize ...', got {line[:120]!r}")
        out[fields[0]] = SlabCache(fields[0], int(fields[1]), int(fields[2]), int(fields[3]))
    return out


@dataclasses.dataclass(frozen=True)
class SlabCounts:
    """Active objects by cache."""
    objects: dict[str, int]

    def __sub__(self, other: SlabCounts) -> SlabCounts:
        return SlabCounts({c: n - other.objects[c] for c, n in self.objects.items() if c in other.objects})

    def __getitem__(self, cache: str) -> int:
        try:
            return self.objects[cache]
        except KeyError:
            raise KeyError(f"slab cache {cache!r}: not read; there are {sorted(self.objects)}") from None

    def within(self, slack: dict[str, int]) -> list[str]:
        """What grew beyond its slack, one line per cache; [] when nothing did."""
        return [f"{cache}: {n:+d} objects (slack {slack.get(cache, 0)})"
                for cache, n in sorted(self.objects.items()) if n > slack.get(cache, 0)]


def _check_names(caches) -> None:
    for c in caches:
        if not _NAME.match(c):
            raise ValueError(f"slab cache name {c!r}: expected letters, digits and _.:-")


def slabs(where, caches=SKB_CACHES) -> SlabCounts:
    """Active objects of ``caches`` now (those the kernel has)."""
    _check_names(caches)
    result = where.run("cat /proc/slabinfo")
    if result.rc != 0:
        raise SlabError(f"reading /proc/slabinfo on {where!r}: {result.stderr.strip()[-300:]}")
    table = parse_slabinfo(result.stdout)
    return SlabCounts({c: table[c].active_objs for c in caches if c in table})


def drained_slabs(where, caches=SKB_CACHES, settle_s: float = 1.0) -> SlabCounts:
    """The counts once traffic has stopped and what can be freed is: slab
    caches shrunk (drop_caches, then each cache's ``shrink``), after a
    settle long enough for deferred frees (RCU, softirqs) to run."""
    _check_names(caches)
    shrink = "; ".join(f"[ -w /sys/kernel/slab/{c}/shrink ] && echo 1 > /sys/kernel/slab/{c}/shrink"
                       for c in caches)
    where.check(f"sync; echo 3 > /proc/sys/vm/drop_caches; sleep {settle_s}; {shrink}; true")
    return slabs(where, caches)


def slack(where, caches=SKB_CACHES) -> dict[str, int]:
    """Objects each cache may hold with no leak (see the module's docstring),
    from /sys/kernel/slab/<cache>/{objs_per_slab,cpu_partial} and the online
    CPUs.  A cache without SLUB's sysfs gets the NAPI bound alone."""
    _check_names(caches)
    cpus = int(where.check("nproc").stdout)
    out = {}
    for c in caches:
        r = where.run(f"cat /sys/kernel/slab/{c}/objs_per_slab /sys/kernel/slab/{c}/cpu_partial")
        per_slab, partial = (int(x) for x in r.stdout.split()[:2]) if r.rc == 0 else (0, 0)
        per_cpu = 2 * (per_slab + partial)  # own slab + partial slabs (2 x cpu_partial objects, rounded up)
        out[c] = cpus * per_cpu + (cpus * NAPI_SKB_CACHE_SIZE if c == "skbuff_head_cache" else 0)
    return out


def leaks(where, baseline: SlabCounts, caches=SKB_CACHES) -> list[str]:
    """What ``caches`` hold beyond ``baseline`` (a drained_slabs reading)
    once drained again, past each cache's slack: one line per cache; []
    when nothing leaked."""
    return (drained_slabs(where, caches) - baseline).within(slack(where, caches))
