"""pktgen inside a guest: the kernel's own packet generator, driven through
/proc/net/pktgen the way samples/pktgen does it.

    result = Pktgen(guest).run("eth0", count=10_000, threads=2, xmit_mode="queue_xmit")
    result.sent, result.errors, result.pps, result.mbps, result.threads[0].sent

One thread per vCPU by default (device ``eth0@N`` on ``kpktgend_N``, each
pinned to its own tx queue as in pktgen_sample03_burst_single_flow.sh).
``count`` packets per thread; the run is bounded by ``timeout`` and stopped
by the harness if it is not done by then.
"""
from __future__ import annotations

import dataclasses
import re

from ..kernel.needs import MissingKernelFeature, unmet
from .observe import split_dump
from ..util import HarnessError

XMIT_MODES = ("start_xmit", "queue_xmit", "netif_receive")
_RESULT = re.compile(r"Result: OK: (\d+)\(c(\d+)\+d(\d+)\) usec, (\d+) \((\d+)byte,(\d+)frags\)\s+"
                     r"(\d+)pps (\d+)Mb/sec \((\d+)bps\) errors: (\d+)")
_ERROR_RESULT = re.compile(r"Result: (.*)")


class PktgenError(HarnessError):
    pass


@dataclasses.dataclass(frozen=True)
class ThreadResult:
    device: str
    sent: int
    errors: int
    pps: int
    bps: int
    usec: int
    pkt_size: int


@dataclasses.dataclass(frozen=True)
class PktgenResult:
    threads: list[ThreadResult]

    @property
    def sent(self) -> int:
        return sum(t.sent for t in self.threads)

    @property
    def errors(self) -> int:
        return sum(t.errors for t in self.threads)

    @property
    def pps(self) -> int:
        """Sum of the threads' rates (they run at the same time)."""
        return sum(t.pps for t in self.threads)

    @property
    def mbps(self) -> float:
        return sum(t.bps for t in self.threads) / 1e6


def parse_result(device: str, text: str) -> ThreadResult:
    """The Result block of /proc/net/pktgen/<device> after a run."""
    m = _RESULT.search(text)
    if not m:
        other = _ERROR_RESULT.search(text)
        raise PktgenError(f"pktgen {device}: no OK result; pktgen says: "
                          f"{other.group(1) if other else text[-500:]!r}")
    usec, _, _, sent, size, _, pps, _, bps, errors = map(int, m.groups())
    return ThreadResult(device, sent, errors, pps, bps, usec, size)


class Pktgen:
    """pktgen in one guest or container (anything with run() and dump())."""

    NEEDS = ("CONFIG_NET_PKTGEN",)

    def __init__(self, where):
        self.where = where
        kernel = getattr(where, "kernel", None) or getattr(getattr(where, "guest", None), "kernel", None)
        reasons = unmet(kernel, self.NEEDS) if kernel is not None else []
        if reasons:
            raise MissingKernelFeature("; ".join(reasons))

    def script(self, dev: str, *, count: int, threads: int, pkt_size: int = 60, burst: int = 1,
               clone_skb: int = 0, dst: str = "198.18.0.2", dst_mac: str | None = None,
               xmit_mode: str = "start_xmit", flags: tuple = ("NO_TIMESTAMP",), rate_pps: int = 0,
               first_thread: int = 0) -> str:
        if xmit_mode not in XMIT_MODES:
            raise ValueError(f"pktgen xmit_mode {xmit_mode!r}: expected one of {', '.join(XMIT_MODES)}")
        if count <= 0 or threads <= 0:
            raise ValueError("pktgen: count and threads must be positive (count 0 would never stop)")
        lines = ["set -e", "P=/proc/net/pktgen",
                 'pg() { echo "$2" > "$1" || { echo "pktgen: $1 refused: $2" >&2; exit 1; }; }',
                 "[ -e $P/pgctrl ] || modprobe pktgen", "pg $P/pgctrl reset"]
        for t in range(first_thread, first_thread + threads):
            d = f"$P/{dev}@{t}"
            lines += [f"pg $P/kpktgend_{t} rem_device_all", f"pg $P/kpktgend_{t} 'add_device {dev}@{t}'",
                      f"pg {d} 'count {count}'", f"pg {d} 'pkt_size {pkt_size}'",
                      f"pg {d} 'clone_skb {clone_skb}'", f"pg {d} 'xmit_mode {xmit_mode}'",
                      f"pg {d} 'dst {dst}'", f"pg {d} 'queue_map_min {t}'", f"pg {d} 'queue_map_max {t}'",
                      f"pg {d} 'delay 0'"]
            if dst_mac:
                lines.append(f"pg {d} 'dst_mac {dst_mac}'")
            if burst > 1:
                lines.append(f"pg {d} 'burst {burst}'")
            if rate_pps:
                lines.append(f"pg {d} 'ratep {rate_pps}'")
            lines += [f"pg {d} 'flag {flag}'" for flag in flags]
        lines.append("pg $P/pgctrl start")
        return "\n".join(lines)

    def start(self, dev: str, *, count: int, threads: int | None = None, first_thread: int = 0,
              **options) -> PktgenRun:
        """Start sending ``count`` packets per thread out of ``dev`` (threads
        ``first_thread``..; one per vCPU by default); the options are those
        of script() (pkt_size, burst, clone_skb, dst, dst_mac, xmit_mode,
        flags, rate_pps)."""
        if threads is None:
            threads = int(self.where.check("nproc").stdout) - first_thread
        script = self.script(dev, count=count, threads=threads, first_thread=first_thread, **options)
        return PktgenRun(self.where, dev, range(first_thread, first_thread + threads), self.where.spawn(script))

    def run(self, dev: str, *, count: int, timeout: float = 120.0, **options) -> PktgenResult:
        """start() and wait(): the result of a finished run."""
        return self.start(dev, count=count, **options).wait(timeout)


class PktgenRun:
    """A pktgen run in progress."""

    def __init__(self, where, dev: str, threads: range, job):
        self.where, self.dev, self.thread_ids, self.job = where, dev, threads, job

    def wait(self, timeout: float = 120.0) -> PktgenResult:
        try:
            result = self.job.wait(timeout)
        except Exception:
            self.stop()  # a killed writer leaves pktgen threads running
            raise
        if result.rc != 0:
            self.stop()
            raise PktgenError(f"pktgen on {self.where!r} failed (rc {result.rc}): {result.stderr.strip()}")
        texts = split_dump(self.where.dump([f"/proc/net/pktgen/{self.dev}@*"]).wait(timeout).stdout)
        return PktgenResult([parse_result(f"{self.dev}@{t}", texts.get(f"/proc/net/pktgen/{self.dev}@{t}", ""))
                             for t in self.thread_ids])

    def stop(self) -> None:
        self.where.run("echo stop > /proc/net/pktgen/pgctrl")
