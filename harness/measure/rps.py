"""RPS steering inside a guest, the way the backlog patches are exercised:
a veth pair whose receiving end steers every packet to one CPU's backlog,
fed by pktgen on another CPU.

    pair = SteeredVeth(guest, target_cpu=1, sender_cpu=0).create()
    result = pair.send(10_000)              # pktgen on vrpstx, thread 0 -> CPU 1's backlog
    pair.delete()

pktgen's packets are UDP/IPv4, so the flow hash RPS needs is there;
veth_xmit hands each one to netif_rx on the sending CPU, which enqueues it
to the target CPU's backlog (or drops it there when the backlog is full,
counted in softnet_stat's dropped column).  Every packet sent is processed
or dropped: nothing else is received on the target CPU.
"""
from __future__ import annotations

import json
import time
from typing import Any

from .observe import parse_cpu_list
from .pktgen import Pktgen, PktgenResult, PktgenRun
from .traffic import GUEST_AGENT, send_from
from ..util import HarnessError


class SteeredVeth:
    NEEDS = ("CONFIG_VETH", "CONFIG_RPS", *Pktgen.NEEDS)

    def __init__(self, where, *, name: str = "vrps", target_cpu: int = 1, sender_cpu: int = 0,
                 netns: str | None = None):
        self.where = where
        self.tx, self.rx = f"{name}tx", f"{name}rx"
        self.target_cpu, self.sender_cpu = target_cpu, sender_cpu
        self.netns = netns  # the receiving end in this (in-guest) namespace, when given
        self.rx_mac = None

    def create(self) -> SteeredVeth:
        mask = format(1 << self.target_cpu, "x")
        if self.netns:
            rx_side = f"ip netns exec {self.netns} sh -c"
            # IPv6 off in the namespace before the veth end lands there: no
            # solicitations or DAD packets to spoil exact counts
            self.where.check(
                f"ip netns add {self.netns} && ip netns exec {self.netns} sysctl -qw "
                f"net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 && "
                f"ip link add {self.tx} type veth peer name {self.rx} netns {self.netns}"
                f" && ip link set {self.tx} up && {rx_side} 'ip link set {self.rx} up && "
                f"echo {mask} > /sys/class/net/{self.rx}/queues/rx-0/rps_cpus'")
            shown = self.where.check(f"ip -j -n {self.netns} link show {self.rx}").stdout
            self.rx_mac = json.loads(shown)[0]["address"]
        else:
            self.where.check(
                f"ip link add {self.tx} type veth peer name {self.rx} && ip link set {self.tx} up && "
                f"ip link set {self.rx} up && echo {mask} > /sys/class/net/{self.rx}/queues/rx-0/rps_cpus")
            self.rx_mac = self.where.check(f"cat /sys/class/net/{self.rx}/address").stdout.strip()
        return self

    def start(self, count: int, **options) -> PktgenRun:
        return Pktgen(self.where).start(self.tx, count=count, threads=1, first_thread=self.sender_cpu,
                                        dst_mac=self.rx_mac, **options)

    def send(self, count: int, timeout: float = 120.0, **options) -> PktgenResult:
        return self.start(count, **options).wait(timeout)

    def inject(self, count: int, timeout: float = 120.0) -> tuple[int, int]:
        """(sent, refused): ``count`` UDP frames through a packet socket on
        the sender CPU (traffic.send_from)."""
        assert self.rx_mac is not None, "inject() before create()"
        return send_from(self.where, self.tx, self.rx_mac, count, cpu=self.sender_cpu, timeout=timeout)

    def delete(self) -> None:
        """Remove the pair (and its namespace): leaves the guest as it was."""
        if self.netns:
            self.where.run(f"ip netns del {self.netns}")
        self.where.run(f"ip link del {self.tx} 2>/dev/null; true")


JOB_CPUS = "/run/harness/job-cpus"  # the CPUs the agent starts commands on


class CpuHog:
    """A SCHED_FIFO busy loop pinned to one CPU (the guest agent's --hog),
    with RT throttling off while it runs, so that CFS tasks on that CPU (a
    backlog thread, a kworker) do not run at all on Linux < 6.12; 6.12's
    fair deadline server still lends them about 5%.

        with CpuHog(guest, cpu=2, seconds=10) as hog:
            ...                 # CPU 2 runs nothing but the hog (and interrupts)
            hog.pulse()         # let whatever waits for CPU 2 run for pulse_us
        # stopped (or hog.stop() earlier)

    While it runs, the agent starts commands on the other CPUs only: the
    scheduler's fork balancing counts an RT-busy CPU as idle and would
    place a new command there, where it would never run.  Never hog the
    CPU the agent itself runs on (CPU 0)."""

    def __init__(self, where, cpu: int, seconds: float, *, priority: int = 50, pulse_us: int = 1000,
                 softirqs: bool = True):
        self.where, self.cpu, self.seconds = where, cpu, seconds
        self.priority, self.pulse_us = priority, pulse_us
        # ksoftirqd/N above the hog: once a softirq spills over to ksoftirqd,
        # Linux runs every later softirq of that CPU there (RCU's included),
        # and a held ksoftirqd would stall RCU grace periods system-wide
        self.softirqs = softirqs
        self._ksoftirqd: int | None = None
        self.pid: int | None = None
        self.job: Any = None  # the hog's Job once started
        self._old_runtime: str | None = None
        self._old_job_cpus: str | None = None

    def start(self) -> CpuHog:
        state = self.where.check(f"sysctl -n kernel.sched_rt_runtime_us; cat /sys/devices/system/cpu/online; "
                                 f"cat {JOB_CPUS} 2>/dev/null || echo all").stdout.split()
        self._old_runtime, online, self._old_job_cpus = state
        allowed = (parse_cpu_list(online) if self._old_job_cpus == "all" else
                   parse_cpu_list(self._old_job_cpus)) - {self.cpu}
        if not allowed:
            raise HogError(f"CPU {self.cpu} is the only CPU left for commands")
        self.where.check(f"sysctl -qw kernel.sched_rt_runtime_us=-1; "
                         f"echo {','.join(map(str, sorted(allowed)))} > {JOB_CPUS}")
        if self.softirqs:
            self._ksoftirqd = int(self.where.check(f"pgrep -x ksoftirqd/{self.cpu}").stdout)
            self.where.check(f"chrt -f -p {self.priority + 1} {self._ksoftirqd}")
        self.job = self.where.spawn(f"exec {GUEST_AGENT} --hog {self.cpu} {self.seconds} {self.priority} "
                                    f"{self.pulse_us}")
        deadline = time.monotonic() + 30
        while b"ready" not in self.job.stdout:
            if not self.job.running or time.monotonic() > deadline:
                result = self.job.wait(5) if not self.job.running else None
                self.stop()
                raise HogError(f"the hog on CPU {self.cpu} did not start: "
                               f"{result.stderr if result else 'no answer in 30 s'}")
            time.sleep(0.02)
        self.pid = int(bytes(self.job.stdout).split()[1])
        return self

    def pulse(self) -> None:
        """Let the CPU's waiting tasks run for about pulse_us."""
        self.where.check(f"kill -USR1 {self.pid}")

    def stop(self) -> None:
        """Stop the hog (if it still runs) and restore RT throttling."""
        if self.job is not None and self.job.running:
            self.where.run(f"kill {self.pid}" if self.pid else "true")
            self.job.wait(30)
        if self._ksoftirqd is not None:
            self.where.check(f"chrt -o -p 0 {self._ksoftirqd}")
            self._ksoftirqd = None
        if self._old_runtime is not None:
            restore = f"rm -f {JOB_CPUS}" if self._old_job_cpus == "all" else f"echo {self._old_job_cpus} > {JOB_CPUS}"
            self.where.check(f"sysctl -qw kernel.sched_rt_runtime_us={self._old_runtime}; {restore}")
            self._old_runtime = None

    def wait(self, timeout: float = 60.0) -> str:
        """Until the hog ends by itself: "done", "migrated" or "stopped"."""
        result = self.job.wait(timeout)
        self.stop()
        return result.stdout.split()[-1] if result.stdout.split() else ""

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class HogError(HarnessError):
    pass
