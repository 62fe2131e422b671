"""Where a lab's host side lives: this machine, or a lab guest that hosts a
nested lab (harness.lab.nest.GuestHost).  Both give a Lab the same calls:

    host.plumb(plan)            # render.host_plan's objects made: Plumbing
    host.namespace(netns, short)  # an Endpoint inside one of them
    host.hypervisor             # where the guests' domains run (vm.guest)
    host.speed_scale            # how much slower its guests are than plain ones (time limits)
    host.vhost_missing(accel)   # why its guests cannot have vhost-net, or None
    host.teardown()             # every object it made is gone
"""
from __future__ import annotations

import dataclasses
import os

from ..endpoint import Endpoint
from ..vm.guest import LOCAL
from .hostnet import HostNamespace, HostNet

VHOST_NET = "/dev/vhost-net"


@dataclasses.dataclass(frozen=True)
class Plumbing:
    lab_id: str                   # 4 hex digits in every object's name
    links: dict[str, str]         # short name -> real name (taps, bridges, veth ends)
    namespaces: dict[str, str]    # short name -> the namespace's real name


class LocalHost:
    """This machine: host objects through netlink, guests through its libvirtd."""

    name = "host"
    hypervisor = LOCAL
    speed_scale = 1.0  # its guests' time limits are as set

    def __init__(self):
        self.net: HostNet | None = None

    def vhost_missing(self, accel: str) -> str | None:
        if not os.path.exists(VHOST_NET):
            return f"this host has no {VHOST_NET} (modprobe vhost_net)"
        if accel != "kvm":
            # libvirt opens vhost-net for KVM domains only, and its QEMU sees
            # a private /dev that has no vhost-net to open itself
            return ("libvirt gives vhost-net to KVM domains only and this host runs TCG "
                    "(a nested lab runs vhost-net under TCG: topologies/nested-vhost.yaml)")
        return None

    def plumb(self, plan: list[dict]) -> Plumbing:
        self.net = HostNet()
        made = self.net.apply(plan)
        return Plumbing(self.net.lab_id, made["links"], made["namespaces"])

    def namespace(self, netns: str, short: str) -> Endpoint:
        return HostNamespace(netns, short)

    def teardown(self):
        if self.net is not None:
            self.net.teardown()
            self.net = None
