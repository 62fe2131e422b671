"""Workloads for A/B runs and for tests: each one defined once, on a lab.

    wl = WORKLOADS["http_proxy"]
    wl.setup(lab)                                  # once per lab
    value, seconds = wl.sample(lab, point=64)      # one measurement at a sweep point

A sample returns the metric and the seconds the workload itself ran (so
that a runner can tell its own overhead apart).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ..measure.observe import snapshot
from ..measure.pktgen import Pktgen
from ..measure.traffic import http_load, send_frames, send_from, tcp_stream
from ..util import HarnessError

if TYPE_CHECKING:
    from ..lab.lab import Lab


class WorkloadError(HarnessError):
    pass


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    topology: str        # topologies/<topology>.yaml
    metric: str          # what sample() returns, with its unit
    sweep_name: str      # the swept parameter ("conns"), or "" for none
    default_sweep: tuple
    run: Callable[..., tuple[float, float]]  # run(lab, point, **options) -> (value, seconds)
    prepare: Callable | None = None         # prepare(lab): once per lab
    higher_is_better: bool = True
    description: str = ""

    def setup(self, lab: Lab) -> None:
        if self.prepare:
            self.prepare(lab)

    def sample(self, lab, point=None, **options) -> tuple[float, float]:
        return self.run(lab, point, **options)


def _pktgen_queue_xmit(lab, threads, count: int = 40_000, rate_pps: int = 0):
    g1 = lab.guest("g1")
    threads = int(threads) if threads else int(g1.check("nproc").stdout)
    t0 = time.monotonic()
    result = Pktgen(g1).run("eth0", count=count, threads=threads, xmit_mode="queue_xmit",
                            dst_mac="02:00:00:00:00:09", rate_pps=rate_pps)
    return float(result.pps), time.monotonic() - t0


def _http_proxy(lab, conns, seconds: float = 3):
    client = lab.container("g1", "client")
    t0 = time.monotonic()
    result = http_load(client, "http://10.77.2.1/", connections=int(conns or 16), seconds=seconds)
    if result.errors:
        raise WorkloadError(f"http_proxy: {result.errors} errors at {conns} connections: {result}")
    return result.requests_per_second, time.monotonic() - t0


def _rfs_on(lab):
    g1 = lab.guest("g1")
    cmds = ["sysctl -qw net.core.rps_sock_flow_entries=32768"]
    for c, dev in (("client", "c0"), ("server", "s0")):
        cmds.append(f"ip netns exec {c} sh -c 'echo 32768 > /sys/class/net/{dev}/queues/rx-0/rps_flow_cnt; "
                    f"echo 3 > /sys/class/net/{dev}/queues/rx-0/rps_cpus'")
    g1.check(" && ".join(cmds))


def _tcp_stream(lab, _point, seconds: float = 3):
    t0 = time.monotonic()
    stream = tcp_stream(lab.container("g1", "server"), lab.container("g1", "client"), "10.77.10.2",
                        seconds=seconds)
    return stream.bits_per_second / 1e9, time.monotonic() - t0


def _guest_rx_pps(lab, _point, frames: int = 100_000):
    g1, tap = lab.guest("g1"), lab.taps["t0"]
    mac = g1.check("cat /sys/class/net/eth0/address").stdout.strip()
    frame = bytes(Ether(dst=mac, src="02:00:00:00:00:01", type=0x88b5) / Raw(b"\0" * 46))
    before = snapshot(g1)
    t0 = time.monotonic()
    send_frames(tap, [frame], frames)
    time.sleep(0.2)  # the guest drains what the tap still holds
    elapsed = time.monotonic() - t0
    received = (snapshot(g1) - before).link("eth0").rx.packets
    return received / elapsed, elapsed


def _nested_rx_pps(lab, backend, frames: int = 20_000):
    """Frames from the outer guest into a tap of the nested guest n1, as
    received by n1: through vhost-net or QEMU's own backend, both run by
    the outer guest's kernel (the kernel under test)."""
    inner = lab.nested("host1")
    host1, n1 = lab.guest("host1"), inner.guest("n1")
    backend = backend or "vhost"
    taps = [t for t, b in inner.backends.items() if b == backend]
    if not taps:
        raise WorkloadError(f"nested_rx_pps: no {backend} tap in the nested lab (backends: {inner.backends}); "
                            "the outer kernel needs CONFIG_VHOST_NET for vhost")
    tap = taps[0]
    dev = f"eth{[n.tap for n in inner.topology.guest('n1').nics].index(tap)}"
    mac = n1.check(f"cat /sys/class/net/{dev}/address").stdout.strip()
    before = snapshot(n1)
    t0 = time.monotonic()
    send_from(host1, inner.taps[tap], mac, frames)
    received, last_change = 0, time.monotonic()
    while time.monotonic() - last_change < 0.5:  # until the ring and the qdisc are drained
        now = (snapshot(n1) - before).link(dev).rx.packets
        if now != received:
            received, last_change = now, time.monotonic()
        time.sleep(0.1)
    elapsed = last_change - t0
    return received / elapsed, elapsed


WORKLOADS = {w.name: w for w in (
    Workload("pktgen_queue_xmit", "single-mq", "pps", "threads", (0,), _pktgen_queue_xmit,
             description="pktgen queue_xmit through the guest NIC's qdisc (seed 000's micro-benchmark); "
                         "threads=0 means one per vCPU"),
    Workload("http_proxy", "proxy-hops", "requests/s", "conns", (16, 32, 64), _http_proxy,
             description="wrk through client -> proxy -> server containers (seed 000's table)"),
    Workload("tcp_stream", "tcp-rfs", "Gbit/s", "", (None,), _tcp_stream, prepare=_rfs_on,
             description="single-flow iperf3 TCP stream with RFS between containers (seed 001)"),
    Workload("guest_rx_pps", "single-q", "pps", "", (None,), _guest_rx_pps,
             description="64-byte frames from the host through the tap, received by the guest (seed 004)"),
    Workload("nested_rx_pps", "nested-vhost", "pps", "backend", ("vhost", "userspace"), _nested_rx_pps,
             description="frames from a guest's own tap into the guest it hosts, through vhost-net or "
                         "QEMU's backend: A/B of the host kernel (seed 004's)"),
)}
