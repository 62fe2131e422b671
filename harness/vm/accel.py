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
import time
from pathlib import Path

import pexpect

from ..util import ACCELS, HarnessError, cache_dir, write_atomic

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


TRANSIENT_VERDICT_S = 3600  # a failed probe is asked again after this (a busy host, a slow boot)


def resolve(accel: str, image: Path, initrd: Path) -> str:
    """'kvm' or 'tcg' for the requested ``auto|kvm|tcg``."""
    if accel not in ACCELS:
        raise AccelError(f"--accel {accel}: expected auto, kvm or tcg")
    if accel == "tcg":
        return "tcg"
    verdict = _cached_verdict()
    if verdict is None:
        ok, why = probe_kvm(image, initrd)
        # a device that is missing or cannot be opened is the host's lasting
        # state; a guest that did not boot may have been a bad moment
        lasting = ok or kvm_usable_device() is not None
        verdict = {"kvm": ok, "why": why, "at": time.time(), "lasting": lasting}
        write_atomic(_verdict_file(), json.dumps(verdict))
    if verdict["kvm"]:
        return "kvm"
    if accel == "kvm":
        raise AccelError(f"--accel kvm: KVM is not usable on this host: {verdict['why']}")
    return "tcg"


def _verdict_file() -> Path:
    return cache_dir() / f"kvm-probe-{_host_key()}.json"


def _cached_verdict() -> dict | None:
    try:
        verdict = json.loads(_verdict_file().read_text())
        if not isinstance(verdict, dict) or not isinstance(verdict.get("kvm"), bool):
            return None
    except (OSError, ValueError):
        return None
    if not verdict.get("lasting", True) and time.time() - float(verdict.get("at", 0)) > TRANSIENT_VERDICT_S:
        return None
    return verdict
