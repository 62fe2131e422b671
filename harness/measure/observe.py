"""Observations: what the kernel counted, before and after.

    before = snapshot(guest)
    ...traffic...
    d = snapshot(guest) - before
    d.softnet[1].processed, d.link("eth0").rx.dropped, d.qdisc("eth0").backlog,
    d.nic("eth0").queue(1).tx["kicks"], d.threads("backlog_napi/*")

One snapshot is one round trip per guest and starts no program: the guest
agent reads procfs and sysctls, the ethtool statistics of every link
(SIOCETHTOOL, what ``ethtool -S`` shows) and the qdiscs (an RTM_GETQDISC
dump, what ``tc -s qdisc`` shows).  Under TCG each exec of ip/tc/ethtool
costs 20-50 ms; the whole snapshot costs less than one of them.  Host
namespaces run the same code (``agent --dump``). The same code reads a guest, a container or a host namespace.

In a delta, counters are differences and gauges (queue lengths, backlog,
thread lists, sysctls) are the later snapshot's values.
"""
from __future__ import annotations

import dataclasses
import errno
import fnmatch
import re

from ..util import HarnessError
from ..vm.console import split_dump

# /proc/net/softnet_stat columns, in order, by kernel version: 11 columns
# before 5.10, 13 from 5.10 (backlog_len, cpu), 15 from 6.9 (input_qlen,
# process_qlen).  None marks columns the kernel prints as 0.
SOFTNET_COLUMNS = ("processed", "dropped", "time_squeeze", None, None, None, None, None,
                   "cpu_collision", "received_rps", "flow_limit_count", "backlog_len", "cpu",
                   "input_qlen", "process_qlen")
SOFTNET_FIELDS = tuple(c for c in SOFTNET_COLUMNS if c and c != "cpu")
SOFTNET_GAUGES = {"backlog_len", "input_qlen", "process_qlen"}

DEFAULT_THREADS = ("ksoftirqd/*", "backlog_napi/*", "napi/*", "kpktgend_*")
DEFAULT_SYSCTLS = ("net.core.netdev_max_backlog", "net.core.backlog_threaded",
                   "net.core.rps_sock_flow_entries", "net.core.skb_defer_max",
                   "net.core.dev_weight", "net.core.netdev_budget", "net.core.flow_limit_table_len")


class MissingCounter(AttributeError):
    pass


class ObserveError(HarnessError):
    """A snapshot could not be read."""


# --- softnet_stat -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SoftnetRow:
    cpu: int
    values: dict  # name -> int, for the columns this kernel prints

    def __getattr__(self, name):
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        if name in SOFTNET_FIELDS:
            raise MissingCounter(f"softnet_stat of this kernel has no {name} column "
                                 f"(it has {', '.join(values)})")
        raise AttributeError(name)

    def __sub__(self, other: SoftnetRow) -> SoftnetRow:
        return SoftnetRow(self.cpu, {k: v if k in SOFTNET_GAUGES else v - other.values.get(k, 0)
                                     for k, v in self.values.items()})


def parse_softnet(text: str) -> dict[int, SoftnetRow]:
    """Rows of /proc/net/softnet_stat by CPU (the cpu column where the
    kernel prints one, else the row's position: older kernels skip offline
    CPUs silently)."""
    rows = {}
    for position, line in enumerate(l for l in text.splitlines() if l.strip()):
        fields = [int(x, 16) for x in line.split()]
        if len(fields) < 11:
            raise ValueError(f"softnet_stat row with {len(fields)} columns: {line!r}")
        values = {name: value for name, value in zip(SOFTNET_COLUMNS, fields, strict=False) if name}
        cpu = values.pop("cpu", position)
        rows[cpu] = SoftnetRow(cpu, values)
    return rows


# --- link counters ----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Direction:
    packets: int = 0
    bytes: int = 0
    errors: int = 0
    dropped: int = 0

    def __sub__(self, other):
        return Direction(*(a - b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=False)))


@dataclasses.dataclass(frozen=True)
class LinkStats:
    name: str
    rx: Direction
    tx: Direction

    def __sub__(self, other):
        return LinkStats(self.name, self.rx - other.rx, self.tx - other.tx)


def parse_netdev(text: str) -> dict[str, LinkStats]:
    """/proc/net/dev (the same dev_get_stats() counters ``ip -s link`` shows;
    read without starting a program)."""
    out = {}
    for line in text.splitlines()[2:]:
        name, sep, counters = line.partition(":")
        if not sep:
            continue
        f = [int(x) for x in counters.split()]
        name = name.strip()
        # rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs drop ...
        out[name] = LinkStats(name, Direction(f[1], f[0], f[2], f[3]), Direction(f[9], f[8], f[10], f[11]))
    return out


def host_link(ifname: str) -> LinkStats:
    """The counters of a link in the harness's own namespace (a lab's host
    tap), through netlink: the same dev_get_stats() counters."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    try:
        with IPRoute() as ipr:
            links = ipr.link("get", ifname=ifname)
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise
        links = []
    stats = links[0].get("stats64") if links else None
    if stats is None:
        raise KeyError(f"link {ifname!r}: no such link here, or no counters")
    side = lambda d: Direction(*(stats.get(f"{d}_{c}") for c in ("packets", "bytes", "errors", "dropped")))  # noqa: E731
    return LinkStats(ifname, side("rx"), side("tx"))


# --- ethtool -S -------------------------------------------------------------

# Per-queue counter names: virtio_net before 6.10 ("rx_queue_0_packets"),
# from 6.10 and veth/tun style ("rx0_packets"), and "rx-0.packets".
_QUEUE_COUNTER = re.compile(r"^(rx|tx)(?:_queue_|-)?(\d+)[_.](.+)$")


@dataclasses.dataclass(frozen=True)
class QueueStats:
    rx: dict
    tx: dict


@dataclasses.dataclass(frozen=True)
class NicStats:
    name: str
    counters: dict  # ethtool -S name -> int

    def __getitem__(self, counter: str) -> int:
        try:
            return self.counters[counter]
        except KeyError:
            raise KeyError(f"{self.name}: ethtool -S has no {counter!r}; it has {sorted(self.counters)}") from None

    def queue(self, index: int) -> QueueStats:
        """Counters of queue ``index`` under either naming scheme, without the prefix."""
        rx: dict[str, int] = {}
        tx: dict[str, int] = {}
        for name, value in self.counters.items():
            m = _QUEUE_COUNTER.match(name)
            if m and int(m.group(2)) == index:
                (rx if m.group(1) == "rx" else tx)[m.group(3)] = value
        return QueueStats(rx, tx)

    @property
    def queues(self) -> int:
        indexes = {int(m.group(2)) for m in map(_QUEUE_COUNTER.match, self.counters) if m}
        return max(indexes) + 1 if indexes else 0

    def __sub__(self, other):
        return NicStats(self.name, {k: v - other.counters.get(k, 0) for k, v in self.counters.items()})


def parse_ethtool(text: str) -> dict[str, NicStats]:
    """The agent's @ethtool lines, "dev counter value" (ethtool -S of each link)."""
    out: dict[str, dict] = {}
    for line in text.splitlines():
        if line.count(" ") < 2:
            raise ValueError(f"ethtool line {line!r}: expected 'dev counter value'")
        value = line.rsplit(" ", 1)[1]
        dev, _, name = line[:-len(value) - 1].partition(" ")
        out.setdefault(dev, {})[name] = int(value)
    return {dev: NicStats(dev, counters) for dev, counters in out.items()}


# --- qdiscs -----------------------------------------------------------------

QDISC_COUNTERS = ("bytes", "packets", "drops", "overlimits", "requeues")


@dataclasses.dataclass(frozen=True)
class Qdisc:
    dev: str
    kind: str
    handle: str
    parent: str | None  # None for the root
    bytes: int
    packets: int
    drops: int
    overlimits: int
    requeues: int
    backlog: int  # gauge: bytes queued
    qlen: int     # gauge: packets queued

    def __sub__(self, other: Qdisc) -> Qdisc:
        return dataclasses.replace(self, **{c: getattr(self, c) - getattr(other, c) for c in QDISC_COUNTERS})


def parse_qdiscs(text: str) -> dict[str, list[Qdisc]]:
    """The agent's @qdisc lines (an RTM_GETQDISC dump, handles written as
    tc writes them): "dev kind handle parent bytes packets drops overlimits
    requeues backlog qlen".  By device, the root first."""
    out: dict[str, list[Qdisc]] = {}
    for line in text.splitlines():
        dev, kind, handle, parent, *numbers = line.split()
        bytes_, packets, drops, overlimits, requeues, backlog, qlen = map(int, numbers)
        out.setdefault(dev, []).append(Qdisc(dev, kind, handle, None if parent == "root" else parent,
                                             bytes_, packets, drops, overlimits, requeues, backlog, qlen))
    for qdiscs in out.values():
        qdiscs.sort(key=lambda q: (q.parent is not None, q.parent or ""))
    return out


# --- kernel threads, sysctls, interrupts ------------------------------------

@dataclasses.dataclass(frozen=True)
class KThread:
    pid: int
    name: str
    cpus: frozenset  # the CPUs it may run on


def parse_cpu_list(text: str) -> frozenset:
    """"0-2,5" -> {0, 1, 2, 5}."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(cpus)


@dataclasses.dataclass(frozen=True)
class Interrupt:
    irq: str
    counts: tuple  # per CPU
    description: str

    @property
    def total(self) -> int:
        return sum(self.counts)


def parse_interrupts(text: str) -> list[Interrupt]:
    lines = text.splitlines()
    if not lines:
        return []
    ncpu = len(lines[0].split())
    out = []
    for line in lines[1:]:
        irq, _, rest = line.partition(":")
        fields = rest.split()
        counts = []
        for f in fields[:ncpu]:
            if not f.isdigit():
                break
            counts.append(int(f))
        out.append(Interrupt(irq.strip(), tuple(counts), " ".join(fields[len(counts):])))
    return out


def parse_softirqs(text: str) -> dict[str, tuple]:
    """/proc/softirqs: softirq name ("NET_RX", "TIMER", ...) -> count per CPU."""
    lines = text.splitlines()
    if not lines:
        return {}
    ncpu = len(lines[0].split())
    out = {}
    for n, line in enumerate(lines[1:], 2):
        name, _, rest = line.partition(":")
        counts = rest.split()
        if not name.strip() or len(counts) != ncpu or not all(c.isdigit() for c in counts):
            raise ObserveError(f"/proc/softirqs line {n}: expected 'NAME: <{ncpu} counts>', got {line[:120]!r}")
        out[name.strip()] = tuple(int(c) for c in counts)
    return out


# --- the snapshot -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Snapshot:
    softnet: dict[int, SoftnetRow]
    links: dict[str, LinkStats]
    nics: dict[str, NicStats] = dataclasses.field(default_factory=dict)
    qdiscs: dict[str, list[Qdisc]] = dataclasses.field(default_factory=dict)
    kthreads: list[KThread] = dataclasses.field(default_factory=list)
    sysctls: dict[str, str] = dataclasses.field(default_factory=dict)
    irqs: list[Interrupt] = dataclasses.field(default_factory=list)
    softirqs: dict[str, tuple] = dataclasses.field(default_factory=dict)

    def link(self, name: str) -> LinkStats:
        return _lookup(self.links, name, "link")

    def nic(self, name: str) -> NicStats:
        return _lookup(self.nics, name, "NIC with ethtool statistics")

    def qdisc(self, dev: str, parent: str | None = None) -> Qdisc:
        """The root qdisc of ``dev`` or its child under ``parent`` (e.g. ":1")."""
        for q in _lookup(self.qdiscs, dev, "device with a qdisc"):
            if q.parent == parent:
                return q
        raise KeyError(f"{dev}: no qdisc with parent {parent!r}; "
                       f"there are {[(q.kind, q.parent) for q in self.qdiscs[dev]]}")

    def children(self, dev: str) -> list[Qdisc]:
        return [q for q in _lookup(self.qdiscs, dev, "device with a qdisc") if q.parent is not None]

    def threads(self, pattern: str = "*") -> list[KThread]:
        """Kernel threads whose name matches ``pattern`` (fnmatch), by pid."""
        return [t for t in self.kthreads if fnmatch.fnmatchcase(t.name, pattern)]

    def sysctl(self, name: str) -> str:
        return _lookup(self.sysctls, name, "sysctl (or it was not asked for)")

    def interrupts(self, match: str) -> tuple:
        """Per-CPU counts summed over the interrupt lines whose description contains ``match``."""
        rows = [i.counts for i in self.irqs if match in i.description]
        if not rows:
            raise KeyError(f"no interrupt line matches {match!r}")
        return tuple(map(sum, zip(*rows, strict=False)))

    def irq(self, name: str) -> tuple:
        """Per-CPU counts of one /proc/interrupts line by its name: "CAL"
        (function call IPIs), "RES" (rescheduling IPIs), "LOC", or a number."""
        for i in self.irqs:
            if i.irq == name:
                return i.counts
        raise KeyError(f"/proc/interrupts: no line {name!r}; there are {[i.irq for i in self.irqs][:40]}")

    def softirq(self, name: str) -> tuple:
        """Per-CPU runs of one softirq ("NET_RX", "NET_TX", ...), from /proc/softirqs."""
        return _lookup(self.softirqs, name, "softirq")

    def __sub__(self, before: Snapshot) -> Snapshot:
        irqs_before = {i.irq: i for i in before.irqs}
        return Snapshot(
            {cpu: row - before.softnet[cpu] for cpu, row in self.softnet.items() if cpu in before.softnet},
            {name: s - before.links[name] for name, s in self.links.items() if name in before.links},
            {name: s - before.nics[name] for name, s in self.nics.items() if name in before.nics},
            {dev: [q - b for q in qs if (b := _same_qdisc(before.qdiscs[dev], q)) is not None]
             for dev, qs in self.qdiscs.items() if dev in before.qdiscs},
            self.kthreads, self.sysctls,
            [Interrupt(i.irq, tuple(a - b for a, b in zip(i.counts, irqs_before[i.irq].counts, strict=False)),
                       i.description)
             for i in self.irqs if i.irq in irqs_before],
            {name: tuple(a - b for a, b in zip(counts, before.softirqs[name], strict=False))
             for name, counts in self.softirqs.items() if name in before.softirqs})


def _same_qdisc(qdiscs: list[Qdisc], q: Qdisc) -> Qdisc | None:
    return next((b for b in qdiscs if (b.parent, b.kind, b.handle) == (q.parent, q.kind, q.handle)), None)


def _lookup(table: dict, key: str, what: str):
    try:
        return table[key]
    except KeyError:
        raise KeyError(f"no {what} {key!r}; there are {sorted(table)}") from None


_PATTERN = re.compile(r"^[A-Za-z0-9_/*?.:\[\]-]+$")
_SYSCTL = re.compile(r"^[A-Za-z0-9_.-]+$")

PROCFS_FILES = ("/proc/net/softnet_stat", "/proc/net/dev", "/proc/interrupts", "/proc/softirqs")


def parse_threads(text: str) -> list[KThread]:
    """The agent's @threads lines: "pid cpus-allowed-list name"."""
    out = []
    for line in text.splitlines():
        pid, cpus, name = line.split(" ", 2)
        out.append(KThread(int(pid), name, parse_cpu_list(cpus)))
    return sorted(out, key=lambda t: t.pid)


def parse_snapshot(files: dict[str, str]) -> Snapshot:
    sysctls = {path[len("/proc/sys/"):].replace("/", "."): text.strip()
               for path, text in files.items() if path.startswith("/proc/sys/")}
    return Snapshot(parse_softnet(files["/proc/net/softnet_stat"]), parse_netdev(files["/proc/net/dev"]),
                    parse_ethtool(files.get("@ethtool", "")), parse_qdiscs(files.get("@qdisc", "")),
                    parse_threads(files.get("@threads", "")), sysctls,
                    parse_interrupts(files.get("/proc/interrupts", "")),
                    parse_softirqs(files.get("/proc/softirqs", "")))


def snapshot(where, threads=DEFAULT_THREADS, sysctls=DEFAULT_SYSCTLS, timeout: float = 30.0) -> Snapshot:
    """A snapshot of a guest, container or host namespace (anything with
    dump()), in one round trip and without starting a program.

    ``threads``: fnmatch patterns of kernel thread names to record;
    ``sysctls``: names to read (those the kernel lacks are left out)."""
    for p in threads:
        if not _PATTERN.match(p):
            raise ValueError(f"snapshot: thread pattern {p!r}: expected letters, digits and _/*?.:-")
    for s in sysctls:
        if not _SYSCTL.match(s):
            raise ValueError(f"snapshot: sysctl name {s!r}: expected a dotted name like net.core.dev_weight")
    result = where.dump([*PROCFS_FILES, "@ethtool", "@qdisc", "@threads " + " ".join(threads),
                         *("/proc/sys/" + s.replace(".", "/") for s in sysctls)]).wait(timeout)
    if result.rc != 0:
        raise ObserveError(f"snapshot of {where!r} failed (rc {result.rc}): {result.stderr[-2000:]}")
    return parse_snapshot(split_dump(result.stdout))


# --- procfs only: readable while rtnl is held ----------------------------------
# (an ethtool ioctl or a qdisc dump waits for rtnl; a test that holds an
# unregister on purpose reads these instead)

def softnet(where, timeout: float = 30.0) -> dict[int, SoftnetRow]:
    """/proc/net/softnet_stat alone, by CPU (online CPUs only)."""
    result = where.dump(["/proc/net/softnet_stat"]).wait(timeout)
    if result.rc != 0:
        raise ObserveError(f"reading softnet_stat of {where!r} failed: {result.stderr[-2000:]}")
    return parse_softnet(split_dump(result.stdout)["/proc/net/softnet_stat"])


@dataclasses.dataclass(frozen=True)
class CpuTime:
    """Ticks (USER_HZ) of one CPU from /proc/stat: busy and all."""
    busy: int
    total: int

    def __sub__(self, other: CpuTime) -> CpuTime:
        return CpuTime(self.busy - other.busy, self.total - other.total)

    @property
    def busy_fraction(self) -> float:
        return self.busy / self.total if self.total else 0.0


def parse_proc_stat(text: str) -> dict[int, CpuTime]:
    """The per-CPU lines of /proc/stat; idle and iowait are not busy."""
    out = {}
    for line in text.splitlines():
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
        out[int(name[3:])] = CpuTime(sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return out


def cpu_times(where, timeout: float = 30.0) -> dict[int, CpuTime]:
    result = where.dump(["/proc/stat"]).wait(timeout)
    return parse_proc_stat(split_dump(result.stdout)["/proc/stat"])
