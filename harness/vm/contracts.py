"""What a guest needs of the place its domain runs: this machine's libvirtd
(``guest.LocalHypervisor``, ``guest.Domain``) or a lab guest hosting a nested
lab (``harness.lab.nest.GuestHost``, ``NestedDomain``).  Checked by mypy, not
at run time."""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Protocol


class Domain(Protocol):
    """One running domain."""

    def resume(self) -> None: ...

    def suspend(self) -> None: ...

    def destroy(self) -> None:
        """Gone, whatever its state; never raises for one already gone."""

    def vhost_fds(self) -> int:
        """How many /dev/vhost-net descriptors its QEMU holds."""

    def pin_vcpus(self, vcpus: int, host_cpus: list[int]) -> None: ...


class Hypervisor(Protocol):
    """Where domains are created and their sockets reached."""

    @property
    def name(self) -> str: ...

    def run_dir(self, domain_name: str) -> Path:
        """A directory for the domain's sockets and files, made."""

    def remove_dir(self, path: Path) -> None: ...

    def create(self, xml: str) -> Domain:
        """The domain of this libvirt XML, started paused."""

    def connect(self, path: Path) -> socket.socket:
        """A connected stream socket to the domain's ``path`` (console, agent)."""
