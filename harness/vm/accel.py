"""Choose the accelerator: KVM only when a probe guest really boots under it.

Some hosts (nested virtualization, odd CPU models) have a /dev/kvm on which
QEMU aborts; there `auto` must quietly mean TCG.  The verdict is cached per
host, QEMU binary and host kernel.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from pathlib import Path

import pexpect

from ..util import HarnessError, cache_dir

QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
PROBE_TIMEOUT_S = 60


class AccelError(HarnessError):
    pass


def _host_key() -> str:
    cpu = ""
    try:
        cpu = next((l for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    except OSError:
        pass
    qemu_id = f"{QEMU}:{os.stat(QEMU).st_mtime_ns}" if os.path.exists(QEMU) else QEMU
    return hashlib.sha256(f"{platform.node()}|{platform.release()}|{cpu}|{qemu_id}".encode()).hexdigest()[:16]


def kvm_usable_device() -> str | None:
    """Why /dev/kvm cannot be used at all, or None when it can be opened."""
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist"
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as e:
        return f"/dev/kvm cannot be opened ({e.strerror})"
    return None


def probe_kvm(image: Path, initrd: Path) -> tuple[bool, str]:
    """Boot a tiny guest (a kernel image, the harness initramfs) under KVM;
    (works, why-not)."""
    why = kvm_usable_device()
    if why:
        return False, why
    argv = ["-accel", "kvm", "-cpu", "host", "-M", "q35", "-m", "256", "-smp", "1",
            "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
            "-kernel", str(image), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 harness.probe"]
    child = pexpect.spawn(QEMU, argv, timeout=PROBE_TIMEOUT_S, encoding="utf-8",
                          codec_errors="replace")
    try:
        i = child.expect(["HARNESS-PROBE-OK", pexpect.EOF, pexpect.TIMEOUT])
        if i == 0:
            return True, ""
        tail = (child.before or "").strip().splitlines()[-3:]
        return False, "a KVM guest did not boot: " + (" | ".join(tail) or "timed out")
    finally:
        child.close(force=True)


def resolve(accel: str, image: Path, initrd: Path) -> str:
    """'kvm' or 'tcg' for the requested ``auto|kvm|tcg``."""
    if accel not in ("auto", "kvm", "tcg"):
        raise AccelError(f"--accel {accel}: expected auto, kvm or tcg")
    if accel == "tcg":
        return "tcg"
    verdict_file = cache_dir() / f"kvm-probe-{_host_key()}.json"
    try:
        verdict = json.loads(verdict_file.read_text())
    except (OSError, ValueError):
        ok, why = probe_kvm(image, initrd)
        verdict = {"kvm": ok, "why": why}
        verdict_file.write_text(json.dumps(verdict))
    if verdict["kvm"]:
        return "kvm"
    if accel == "kvm":
        raise AccelError(f"--accel kvm: KVM is not usable on this host: {verdict['why']}")
    return "tcg"
