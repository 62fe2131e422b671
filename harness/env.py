"""What every entry point needs before a guest boots, done one way for the
pytest plugin, the CLI and the tools/bench-* scripts: root, a libvirtd that
answers, nothing left of killed runs (their guests and labs), the initramfs
for the kernel, and the accelerator (KVM only when it really boots a
guest, else TCG)."""
from __future__ import annotations

import logging
import os

from .lab.hostnet import reap_stale_labs
from .util import HarnessError
from .vm.accel import resolve
from .vm.guest import libvirt_conn, reap_stale_guests
from .vm.images import build_initramfs

log = logging.getLogger(__name__)


def prepare(kernel, accel: str = "auto") -> str:
    """Check and clean the host for guests of ``kernel``; returns the
    accelerator to use ("kvm" or "tcg") for the requested one."""
    if os.geteuid() != 0:
        raise HarnessError("guests need root (libvirt qemu:///system, taps, namespaces): run as root")
    libvirt_conn()
    reaped = reap_stale_guests() + reap_stale_labs()
    if reaped:
        log.info("removed what killed runs left: %s", ", ".join(reaped))
    initrd = build_initramfs(kernel)
    return resolve(accel, kernel.image, initrd)
