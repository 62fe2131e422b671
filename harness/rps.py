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

import time

from .pktgen import Pktgen, PktgenResult, PktgenRun


class SteeredVeth:
    def __init__(self, where, *, name: str = "vrps", target_cpu: int = 1, sender_cpu: int = 0,
                 netns: str | None = None):
        self.where = where
        self.tx, self.rx = f"{name}tx", f"{name}rx"
        self.target_cpu, self.sender_cpu = target_cpu, sender_cpu
        self.netns = netns  # the receiving end in this (in-guest) namespace, when given
        self.rx_mac = None

    def create(self) -> "SteeredVeth":
        mask = format(1 << self.target_cpu, "x")
        if self.netns:
            rx_side = f"ip netns exec {self.netns} sh -c"
            self.where.check(
                f"ip netns add {self.netns} && ip link add {self.tx} type veth peer name {self.rx} netns {self.netns}"
                f" && ip link set {self.tx} up && {rx_side} 'ip link set {self.rx} up && "
                f"echo {mask} > /sys/class/net/{self.rx}/queues/rx-0/rps_cpus'")
            self.rx_mac = self.where.check(f"ip -n {self.netns} -br link show {self.rx}").stdout.split()[2]
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

    def delete(self):
        """Remove the pair (and its namespace): leaves the guest as it was."""
        if self.netns:
            self.where.run(f"ip netns del {self.netns}")
        self.where.run(f"ip link del {self.tx} 2>/dev/null; true")


def cpu_hog(where, cpu: int, seconds: float, marker: str = "/tmp/harness-hog"):
    """Hold ``cpu`` with a SCHED_FIFO busy loop for ``seconds`` (RT
    throttling off), returning once it runs; the caller waits on the job.
    Linux >= 6.12 still lends SCHED_OTHER tasks about 5% of the CPU through
    its fair deadline server, so the hog slows the CPU's threads down
    rather than stopping them outright."""
    old = where.check(f"rm -f {marker}; sysctl -n kernel.sched_rt_runtime_us").stdout.strip()
    where.check("sysctl -qw kernel.sched_rt_runtime_us=-1")
    # timeout stays an ordinary task on another CPU, so it can stop the hog
    job = where.spawn(f"timeout {seconds} chrt -f 50 taskset -c {cpu} "
                      f"sh -c ': > {marker}; while :; do :; done'; rm -f {marker}; "
                      f"sysctl -qw kernel.sched_rt_runtime_us={old}")
    for _ in range(200):
        if where.run(f"test -e {marker}").rc == 0:
            return job
        time.sleep(0.05)
    job.kill()
    raise RuntimeError(f"cpu_hog: the hog on CPU {cpu} did not start")
