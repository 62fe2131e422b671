"""Observations: what the kernel counted, before and after.

    before = snapshot(guest)
    ...traffic...
    d = snapshot(guest) - before
    d.softnet[1].processed, d.link("eth0").rx.packets

A snapshot reads /proc/net/softnet_stat and every link's counters in one
command (one round trip per guest); the same code reads a host namespace.
"""
from __future__ import annotations

import dataclasses
import json

# /proc/net/softnet_stat columns, in order, by kernel version: 11 columns
# before 5.10, 13 from 5.10 (backlog_len, cpu), 15 in newer kernels
# (input_qlen, process_qlen).  None marks columns the kernel prints as 0.
SOFTNET_COLUMNS = ("processed", "dropped", "time_squeeze", None, None, None, None, None,
                   "cpu_collision", "received_rps", "flow_limit_count", "backlog_len", "cpu",
                   "input_qlen", "process_qlen")
SOFTNET_FIELDS = tuple(c for c in SOFTNET_COLUMNS if c and c != "cpu")
SEP = "\n--harness-snapshot--\n"


class MissingCounter(AttributeError):
    pass


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
                                 f"(it prints {len([c for c in values]) + 1} columns)")
        raise AttributeError(name)

    def __sub__(self, other: "SoftnetRow") -> "SoftnetRow":
        return SoftnetRow(self.cpu, {k: v - other.values.get(k, 0) for k, v in self.values.items()})


def parse_softnet(text: str) -> dict[int, SoftnetRow]:
    """Rows of /proc/net/softnet_stat by CPU (the cpu column where the
    kernel prints one, else the row's position: older kernels skip offline
    CPUs silently)."""
    rows = {}
    for position, line in enumerate(l for l in text.splitlines() if l.strip()):
        fields = [int(x, 16) for x in line.split()]
        if len(fields) < 11:
            raise ValueError(f"softnet_stat row with {len(fields)} columns: {line!r}")
        values = {name: value for name, value in zip(SOFTNET_COLUMNS, fields) if name}
        cpu = values.pop("cpu", position)
        rows[cpu] = SoftnetRow(cpu, values)
    return rows


@dataclasses.dataclass(frozen=True)
class Direction:
    packets: int = 0
    bytes: int = 0
    errors: int = 0
    dropped: int = 0

    def __sub__(self, other):
        return Direction(*(a - b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


@dataclasses.dataclass(frozen=True)
class LinkStats:
    name: str
    rx: Direction
    tx: Direction

    def __sub__(self, other):
        return LinkStats(self.name, self.rx - other.rx, self.tx - other.tx)


def parse_links(text: str) -> dict[str, LinkStats]:
    """``ip -s -j link`` output to counters by interface name."""
    out = {}
    for link in json.loads(text or "[]"):
        stats = link.get("stats64") or link.get("stats") or {}
        rx, tx = stats.get("rx", {}), stats.get("tx", {})
        out[link["ifname"]] = LinkStats(
            link["ifname"],
            Direction(rx.get("packets", 0), rx.get("bytes", 0), rx.get("errors", 0), rx.get("dropped", 0)),
            Direction(tx.get("packets", 0), tx.get("bytes", 0), tx.get("errors", 0), tx.get("dropped", 0)))
    return out


@dataclasses.dataclass(frozen=True)
class Snapshot:
    softnet: dict[int, SoftnetRow]
    links: dict[str, LinkStats]

    def link(self, name: str) -> LinkStats:
        try:
            return self.links[name]
        except KeyError:
            raise KeyError(f"no link {name!r}; links: {sorted(self.links)}") from None

    def __sub__(self, before: "Snapshot") -> "Snapshot":
        return Snapshot(
            {cpu: row - before.softnet[cpu] for cpu, row in self.softnet.items() if cpu in before.softnet},
            {name: stats - before.links[name] for name, stats in self.links.items() if name in before.links})


SNAPSHOT_COMMAND = f"cat /proc/net/softnet_stat; printf '{SEP}'; ip -s -j link show"


def parse_snapshot(text: str) -> Snapshot:
    softnet, links = text.split(SEP)
    return Snapshot(parse_softnet(softnet), parse_links(links))


def snapshot(where) -> Snapshot:
    """A snapshot of a guest, container or host namespace (anything with check())."""
    return parse_snapshot(where.check(SNAPSHOT_COMMAND).stdout)
