"""Guest images: the initramfs (cached by content hash) and the domain XML.

The initramfs is small on purpose: busybox, the static command agent, and only
the modules it takes to mount the host's root over virtio-9p.  Everything else
(ip, tc, ethtool, iperf3, python3 with scapy, the other modules) is read from
the host through that mount, so a guest has the host's real tools.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import lzma
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from ..kernel.kernel import Kernel
from ..endpoint import cmd
from ..util import REPO, HarnessError, cache_dir, locked_dir, temp_beside

GUEST_DIR = REPO / "images" / "guest"
BUSYBOX = Path("/bin/busybox")
QBOOT = "/usr/share/qemu/qboot.rom"
# Programs a guest runs on most commands.  They and their libraries are put in
# the initramfs and bind-mounted over their 9p paths: exec'ing a program over
# 9p costs a round trip per open under TCG (dash alone ~10 ms a command).
HOT_PROGRAMS = ("sh", "cat", "grep", "sed", "awk", "head", "tail", "wc", "sleep", "timeout",
                "taskset", "nproc", "sysctl", "ip", "tc", "ethtool", "ls", "dmesg",
                "mount", "chrt", "kill")
HOT_FILES = ("/etc/ld.so.cache",)


log = logging.getLogger(__name__)


class ImageError(HarnessError):
    pass


# Guests of a lab boot in parallel threads: one builds, the others wait.
_build_lock = threading.Lock()


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def build_agent() -> Path:
    """The static guest agent, compiled once per source version."""
    src = (GUEST_DIR / "agent.c").read_bytes()
    out = cache_dir() / "agent" / f"agent-{_digest(src)}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_beside(out)
        cmd(["gcc", "-static", "-O2", "-Wall", "-o", tmp, GUEST_DIR / "agent.c"])
        os.replace(tmp, out)
    return out


def static_shell() -> Path | None:
    """The static dash `harness build-shell` made (tools/setup runs it), if any."""
    found = sorted((cache_dir() / "shell").glob("dash-*-static"))
    return found[-1] if found else None


def build_static_shell() -> Path:
    """Build the host's dash version static, from Debian's source package.

    Every command a guest runs is one exec of the shell; a dynamic /bin/sh
    costs ~3 ms more per command under TCG (loader, libc over 9p) than a
    static one.  Upstream source at the host's version (Debian's patches
    would need automake to regenerate the build files)."""
    version = cmd(["dpkg-query", "-W", "-f=${Version}", "dash"]).stdout.strip()
    out = cache_dir() / "shell" / f"dash-{version}-static"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("building dash %s static into %s", version, out)
    with tempfile.TemporaryDirectory(prefix=f"harness-dash-{os.getpid()}-") as tmp:
        cmd(["apt-get", "source", "--download-only", "-qq", f"dash={version}"], cwd=tmp, timeout=300)
        dsc = next(Path(tmp).glob("*.dsc"))
        cmd(["dpkg-source", "-x", "--skip-patches", dsc.name, "src"], cwd=tmp)
        src = Path(tmp) / "src"
        cmd(["./configure", "--enable-static", "CFLAGS=-O2"], cwd=src, timeout=300)
        cmd(["make", f"-j{os.cpu_count() or 1}"], cwd=src, timeout=600)
        tmp_out = temp_beside(out)
        shutil.copy(src / "src" / "dash", tmp_out)
        os.replace(tmp_out, out)
    return out


def module_load_order(modules_dir: Path, names) -> list[Path]:
    """Module files for ``names`` and their dependencies, dependencies first."""
    dep = {}
    by_name = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        path, deps = line.split(":", 1)
        dep[path] = deps.split()
        by_name[_module_name(path)] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for d in reversed(dep.get(path, [])):  # modules.dep lists the nearest last
            visit(d)
        order.append(path)

    for name in names:
        found = by_name.get(name.replace("-", "_"))
        if found is None:
            raise ImageError(f"{modules_dir}: module {name} is not in modules.dep "
                             "and not built in; the guest cannot mount its root")
        visit(found)
    return [modules_dir / p for p in order]


def _module_name(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".xz", ".zst", ".gz"):
        base = base.removesuffix(suffix)
    return base.removesuffix(".ko").replace("-", "_")


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    if path.suffix == ".gz":
        import gzip
        return gzip.decompress(data)
    return data


def stage1_modules(kernel: Kernel) -> list[Path]:
    """Modules loaded by /init: 9p for the root; virtio_net, since no udev
    coldplugs the NICs (all others load on demand through modprobe)."""
    needed = [m for m, opt in (("9pnet_virtio", "NET_9P_VIRTIO"), ("9p", "9P_FS"),
                               ("virtio_net", "VIRTIO_NET"))
              if not kernel.builtin(opt) and (not kernel.config or kernel.has(opt))]
    if not needed:
        return []
    if kernel.config and not all(kernel.has(o) for o in ("NET_9P_VIRTIO", "9P_FS")):
        raise ImageError(f"kernel {kernel.release} has no virtio-9p (CONFIG_NET_9P_VIRTIO, "
                         "CONFIG_9P_FS): the guest cannot mount the host root")
    if kernel.modules_dir is None:
        raise ImageError(f"kernel {kernel.release} builds 9p as modules but no modules "
                         "directory was found (give --modules)")
    return module_load_order(kernel.modules_dir, needed)


@functools.cache
def hot_files() -> tuple[Path, ...]:
    """Real paths of HOT_PROGRAMS, their shared libraries and the loader."""
    found: set[str] = set(p for p in HOT_FILES if os.path.exists(p))
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    for prog in HOT_PROGRAMS:
        path = shutil.which(prog, path=env["PATH"])
        if path is None:
            continue
        found.add(os.path.realpath(path))
        ldd = subprocess.run(["ldd", path], capture_output=True, text=True)
        for line in ldd.stdout.splitlines():
            parts = line.split()
            lib = parts[2] if "=>" in parts and len(parts) > 2 else parts[0] if parts else ""
            if lib.startswith("/"):
                found.add(os.path.realpath(lib))
    return tuple(sorted(Path(p) for p in found))


def build_initramfs(kernel: Kernel) -> Path:
    """An uncompressed newc cpio for ``kernel``, cached by its inputs.

    The cache key hashes each input's path, size and mtime (and the text of the
    generated files), so a warm start reads no file contents.
    """
    with _build_lock:
        return _build_initramfs(kernel)


def _build_initramfs(kernel: Kernel) -> Path:
    if not BUSYBOX.exists():
        raise ImageError(f"{BUSYBOX} is missing: install busybox-static (tools/setup does)")
    modules = stage1_modules(kernel)
    # destination in the image -> (source file or generated bytes, mode)
    files: dict[str, tuple[Path | bytes, int]] = {
        "init": (GUEST_DIR / "init", 0o755),
        "stage2": (GUEST_DIR / "stage2", 0o644),
        "agent": (build_agent(), 0o755),
        "bin/busybox": (BUSYBOX, 0o755),
    }
    shell = static_shell()
    if shell is not None:
        files["sh"] = (shell, 0o755)
    order = []
    for m in modules:
        name = _module_name(m.name) + ".ko"
        files[f"modules/{name}"] = (m, 0o644)
        order.append(name)
    files["modules/order"] = ("\n".join(order).encode() + b"\n", 0o644)
    hot = hot_files()
    for path in hot:
        files["hot" + str(path)] = (path, path.stat().st_mode & 0o777)
    files["hot.list"] = ("\n".join(map(str, hot)).encode() + b"\n", 0o644)

    def identity(item: tuple[Path | bytes, int]) -> bytes:
        src, mode = item
        if isinstance(src, bytes):
            return src + str(mode).encode()
        st = src.stat()
        return f"{src}:{st.st_size}:{st.st_mtime_ns}:{mode}".encode()

    key = _digest(*(k.encode() + identity(v) for k, v in sorted(files.items())))
    out = cache_dir() / "initramfs" / f"{key}.cpio"
    if out.exists():
        return out
    # one process builds an image, the others (pytest -n workers) wait and reuse it
    with locked_dir(out.parent):
        if not out.exists():
            _write_cpio(files, out)
    return out


def _write_cpio(files: dict[str, tuple[Path | bytes, int]], out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f"harness-initramfs-{os.getpid()}-") as tmp:
        root = Path(tmp)
        for d in ("proc", "sys", "dev", "newroot", "modules", "bin"):
            (root / d).mkdir(exist_ok=True)
        for rel, (src, mode) in files.items():
            data = src if isinstance(src, bytes) else (
                _read_module(src) if rel.startswith("modules/") else src.read_bytes())
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
            os.chmod(root / rel, mode)
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        part = temp_beside(out)
        with open(part, "wb") as f:
            subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=root,
                           input="\n".join(names).encode(), stdout=f, check=True)
        os.replace(part, out)


def domain_xml(*, name: str, kernel: Kernel, initrd: Path, cmdline: str, vcpus: int,
               memory_mb: int, accel: str, console_sock: Path, agent_sock: Path,
               interfaces: Sequence[str] = (), qemu_args: Sequence[str] = ()) -> str:
    """libvirt XML for a direct-kernel-boot q35 guest with two channels;
    ``qemu_args`` go to QEMU as they are (devices libvirt will not make)."""
    kvm = accel == "kvm"
    cpu = "<cpu mode='host-passthrough'/>" if kvm else ""
    # qboot: a firmware that only loads a kernel; with a PVH vmlinux the guest
    # reaches its kernel ~1 s sooner than through SeaBIOS under TCG.
    loader = (f"<loader readonly='yes' type='rom'>{QBOOT}</loader>"
              if kernel.pvh and os.path.exists(QBOOT) else "")
    nics = "\n    ".join(interfaces)
    namespace, passthrough = "", ""
    if qemu_args:
        namespace = " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'"
        passthrough = ("\n  <qemu:commandline>" + "".join(f"<qemu:arg value={quoteattr(a)}/>" for a in qemu_args)
                       + "</qemu:commandline>")
    return f"""<domain type='{'kvm' if kvm else 'qemu'}'{namespace}>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{int(memory_mb)}</memory>
  <vcpu>{int(vcpus)}</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    {loader}
    <kernel>{escape(str(kernel.boot_image))}</kernel>
    <initrd>{escape(str(initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  {cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='unix'>
      <source mode='bind' path={quoteattr(str(console_sock))}/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <source mode='bind' path={quoteattr(str(agent_sock))}/>
      <target type='virtio' name='harness.agent'/>
    </channel>
    <filesystem type='mount' accessmode='passthrough'>
      <source dir='/'/>
      <target dir='hostroot'/>
      <readonly/>
    </filesystem>
    {nics}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>{passthrough}
</domain>
"""
