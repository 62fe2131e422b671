"""What every entry point needs before a guest boots, done one way for the
pytest plugin, the CLI and the tools/bench-* scripts: root, a libvirtd that
answers, nothing left of killed runs (their guests and labs), the initramfs
for the kernel, and the accelerator (KVM only when it really boots a
guest, else TCG)."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from .lab.hostnet import reap_stale_labs
from .util import HarnessError, cache_dir, reap_temp
from .vm.accel import resolve
from .vm.budget import reap_shares
from .vm.guest import libvirt_conn, reap_stale_guests
from .vm.images import build_initramfs

log = logging.getLogger(__name__)


# where runs write temporary files (util.temp_beside, util.temp_dir)
CACHE_SUBDIRS = ("", "builds", "initramfs", "agent", "shell", "kernels", "ikconfig", "vmlinux", "tree-modules",
                 "tree-builds", "ksft-configs", "ksft")


def prepare(kernel, accel: str = "auto") -> str:
    """Check and clean the host for guests of ``kernel``; returns the
    accelerator to use ("kvm" or "tcg") for the requested one."""
    if os.geteuid() != 0:
        raise HarnessError("guests need root (libvirt qemu:///system, taps, namespaces): run as root")
    libvirt_conn()
    reaped = reap_stale_guests() + reap_stale_labs() + reap_leftovers()
    if reaped:
        log.info("removed what killed runs left: %s", ", ".join(reaped))
    if secrets_exposed():
        log.warning("libvirtd sees the host's /etc/shadow: its guests can read it over 9p; tools/setup starts "
                    "libvirtd with the host's secrets masked")
    initrd = build_initramfs(kernel)
    return resolve(accel, kernel.image, initrd)


def reap_leftovers() -> list[str]:
    """Temporary files and directories, and host budget shares, of runs that were killed."""
    return (reap_temp([tempfile.gettempdir()], names_only=True)
            + reap_temp([cache_dir() / d for d in CACHE_SUBDIRS]) + reap_shares())


def libvirtd_pid() -> int | None:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "libvirtd":
                    return int(proc.name)
            except OSError:
                continue
    return None


def secrets_exposed() -> bool:
    """Whether the libvirtd the guests come from (and so their QEMUs and
    9p root) can read the host's /etc/shadow: tools/setup starts it in a
    mount namespace where it reads as empty."""
    pid = libvirtd_pid()
    try:
        return pid is not None and os.stat(f"/proc/{pid}/root/etc/shadow").st_size > 0
    except OSError:
        return False
