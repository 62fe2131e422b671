"""Where a lab's parts live: its host side (this machine, ``LocalHost``, or
a lab guest that hosts a nested lab, ``harness.lab.nest.GuestHost``: both
are a ``LabHost``) and its containers (namespaces inside a guest)."""
from __future__ import annotations

import dataclasses
import os
import shlex
from typing import Protocol

from ..endpoint import Endpoint
from ..vm.console import Job
from ..vm.contracts import Hypervisor
from ..vm.guest import LOCAL, Guest
from .hostnet import HostNamespace, HostNet

VHOST_NET = "/dev/vhost-net"


@dataclasses.dataclass(frozen=True)
class Plumbing:
    lab_id: str                   # 4 hex digits in every object's name
    links: dict[str, str]         # short name -> real name (taps, bridges, veth ends)
    namespaces: dict[str, str]    # short name -> the namespace's real name


class LabHost(Protocol):
    """What a Lab asks of the place its host side lives (read-only members:
    an implementation may keep them as plain attributes)."""

    @property
    def name(self) -> str: ...

    @property
    def hypervisor(self) -> Hypervisor:
        """Where the guests' domains run."""

    @property
    def speed_scale(self) -> float:
        """How much slower its guests are than plain ones (their time limits)."""

    def plumb(self, plan: list[dict]) -> Plumbing:
        """render.host_plan's objects made."""

    def namespace(self, netns: str, short: str) -> Endpoint:
        """An Endpoint inside one of the namespaces it made."""

    def vhost_missing(self, accel: str) -> str | None:
        """Why its guests cannot have vhost-net, or None."""

    def teardown(self) -> None:
        """Every object it made is gone."""


class Container(Endpoint):
    """A network namespace inside a guest."""

    NEEDS = ("CONFIG_NET_NS", "CONFIG_VETH")

    def __init__(self, guest: Guest, netns: str):
        self.guest = guest
        self.netns = netns
        self.name = f"{guest.name}/{netns}"

    def _wrap(self, command: str) -> str:
        return f"ip netns exec {shlex.quote(self.netns)} sh -c {shlex.quote(command)}"

    def spawn(self, command: str) -> Job:
        return self.guest.spawn(self._wrap(command))

    def dump(self, patterns: list[str]) -> Job:
        return self.guest.dump(patterns, netns=self.netns)

    def __repr__(self):
        return f"<Container {self.name}>"


class LocalHost:
    """This machine: host objects through netlink, guests through its libvirtd."""

    name = "host"
    hypervisor: Hypervisor = LOCAL
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

    def teardown(self) -> None:
        if self.net is not None:
            self.net.teardown()
            self.net = None
