"""Kernel tracepoints through tracefs, in a private trace instance of the
guest (or namespace host) so that nothing else's tracing is touched.

    with trace_events(guest, ["skb:consume_skb", "irq:softirq_entry", "irq:softirq_exit"],
                      filters={"irq:softirq_entry": "vec == 3", "irq:softirq_exit": "vec == 3"}) as trace:
        ...workload...
    trace.events          # [TraceEvent], in time order
    trace.lost            # events the ring buffers overwrote (a test asserts none)
    fates = read_skb_fates(trace.events, reader_cpu=1)  # where the skbs CPU 1 read were freed
    batches(trace.events, cpu=0, inside=lambda e: e in fates.frees)  # the skbs each flush freed

Which CPU freed an skb, inside which softirq run, is then a count over
``events``: seed 001's "frees happen on the allocating CPU" measured.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
from collections.abc import Callable, Iterator

from ..util import HarnessError

TRACEFS = "/sys/kernel/tracing"
_EVENT = re.compile(r"^[a-z0-9_]+:[a-z0-9_]+$")
_FILTER = re.compile(r"^[\w\s=!<>&|()'\".~*-]*$")
_LINE = re.compile(r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
                   r"(?:(?P<flags>[^\s\d][^\s]*)\s+)?(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s?(?P<fields>.*)$")
_OVERRUN = re.compile(r"^overrun:\s*(\d+)$", re.M)
_counter = itertools.count()


class TracingError(HarnessError):
    pass


@dataclasses.dataclass(frozen=True)
class TraceEvent:
    task: str
    pid: int
    cpu: int
    timestamp: float
    name: str        # the event's name, without its system: "consume_skb"
    fields: str      # the rest of the line as the kernel printed it

    def field(self, key: str) -> str | None:
        """``key=value`` from the printed fields (``location``, ``vec``, ``skbaddr``)."""
        m = re.search(rf"(?:^|\s){re.escape(key)}=(\S+)", self.fields)
        return m.group(1) if m else None


def parse_trace(text: str) -> list[TraceEvent]:
    """The ``trace`` file of an instance: one event a line, ``#`` comments.
    A line that is not an event (a guest's bytes are untrusted) is an error
    naming it."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise TracingError(f"trace line {n}: not an event line: {line[:200]!r}")
        out.append(TraceEvent(m.group("task"), int(m.group("pid")), int(m.group("cpu")), float(m.group("ts")),
                              m.group("event"), m.group("fields")))
    return out


def parse_overruns(text: str) -> int:
    """Events lost to a full ring, summed over the per-CPU ``stats`` files."""
    return sum(int(n) for n in _OVERRUN.findall(text))


def batches(events: list[TraceEvent], cpu: int, inside: Callable[[TraceEvent], bool],
            boundaries=("softirq_entry", "softirq_exit", "napi_poll")) -> list[int]:
    """The sizes of the runs of ``inside`` events on ``cpu`` that no
    boundary event on that CPU separates: with the defaults, the skbs one
    flush of a CPU's defer list freed (net_rx_action flushes it before each
    NAPI poll; needs irq:softirq_entry/exit and napi:napi_poll)."""
    sizes: list[int] = []
    run = 0
    for e in events:
        if e.cpu != cpu:
            continue
        if e.name in boundaries:
            if run:
                sizes.append(run)
            run = 0
        elif inside(e):
            run += 1
    if run:
        sizes.append(run)
    return sizes


@dataclasses.dataclass
class SkbFates:
    """What became of the skbs a reader's recvmsg() copied out on one CPU."""
    read: int                                   # skbs read (partial reads of one skb count once)
    freed_on: dict[int, int]                    # of those, freed through consume_skb, by CPU
    untraced: int                               # read and never seen freed: freed at once
                                                # (kfree without a tracepoint) or still queued
    frees: list[TraceEvent] = dataclasses.field(default_factory=list, repr=False)  # those consume_skb events

    def share_freed_on(self, cpu: int) -> float:
        return self.freed_on.get(cpu, 0) / self.read if self.read else 0.0


def read_skb_fates(events: list[TraceEvent], reader_cpu: int) -> SkbFates:
    """Pairs each skb_copy_datagram_iovec on ``reader_cpu`` with the next
    consume_skb of the same skb address on any CPU (needs both events).
    An address read again before it was consumed is the same skb read in
    parts; so a silently freed skb whose address comes back undercounts
    ``read``, never ``freed_on``."""
    pending: set[str] = set()
    read = 0
    freed_on: dict[int, int] = {}
    frees: list[TraceEvent] = []
    for e in events:
        addr = e.field("skbaddr")
        if addr is None:
            continue
        if e.name == "skb_copy_datagram_iovec" and e.cpu == reader_cpu:
            if addr not in pending:
                pending.add(addr)
                read += 1
        elif e.name == "consume_skb" and addr in pending:
            pending.discard(addr)
            freed_on[e.cpu] = freed_on.get(e.cpu, 0) + 1
            frees.append(e)
    return SkbFates(read, freed_on, len(pending), frees)


def count(events: list[TraceEvent], name: str, cpu: int | None = None, where: str | None = None) -> int:
    """Events called ``name`` (on ``cpu``; whose location starts with ``where``)."""
    return sum(1 for e in events if e.name == name and (cpu is None or e.cpu == cpu)
               and (where is None or (e.field("location") or "").startswith(where)))


@dataclasses.dataclass
class Trace:
    instance: str
    events: list[TraceEvent] = dataclasses.field(default_factory=list)
    lost: int = 0


@contextlib.contextmanager
def trace_events(where, events: list[str], *, filters: dict[str, str] | None = None,
                 buffer_kb: int = 4096) -> Iterator[Trace]:
    """Record ``events`` ("system:event") in a new trace instance of
    ``where`` for the duration of the block; read, then removed, at its
    end (also when the block raised)."""
    filters = filters or {}
    for e in [*events, *filters]:
        if not _EVENT.match(e):
            raise ValueError(f"trace_events: {e!r}: expected system:event, like skb:consume_skb")
    for f in filters.values():
        if not _FILTER.match(f) or "'" in f:
            raise ValueError(f"trace_events: filter {f!r}: expected a tracefs filter expression")
    instance = f"{TRACEFS}/instances/harness-{next(_counter)}"
    setup = [f"mountpoint -q {TRACEFS} || mount -t tracefs nodev {TRACEFS}",
             f"mkdir {instance}", f"echo {int(buffer_kb)} > {instance}/buffer_size_kb"]
    for e in events:
        system, name = e.split(":")
        if e in filters:
            setup.append(f"echo '{filters[e]}' > {instance}/events/{system}/{name}/filter")
        setup.append(f"echo 1 > {instance}/events/{system}/{name}/enable")
    result = where.run(" && ".join(setup))
    if result.rc != 0:
        where.run(f"rmdir {instance} 2>/dev/null")
        raise TracingError(f"tracing {', '.join(events)} on {where!r}: {result.stderr.strip()[-500:]} "
                           "(needs tracefs and these events in the kernel: CONFIG_TRACING)")
    trace = Trace(instance)
    try:
        yield trace
    finally:
        stop = where.run(f"echo 0 > {instance}/tracing_on; cat {instance}/trace", timeout=300)
        stats = where.run(f"cat {instance}/per_cpu/cpu*/stats")
        where.run(f"echo 0 > {instance}/events/enable; rmdir {instance}")
    trace.events = sorted(parse_trace(stop.stdout), key=lambda e: e.timestamp)
    trace.lost = parse_overruns(stats.stdout)
