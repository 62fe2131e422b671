"""Find, fetch and describe a guest kernel: image, modules, config, version.

A kernel is a bzImage plus, where it has loadable modules, the
``lib/modules/<release>`` tree built with it, plus its ``.config``.  The
default one is Debian's generic 6.12 image package, fetched once with
``apt-get download`` into the per-user cache.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from ..endpoint import cmd
from ..util import HarnessError, cache_dir, temp_beside, write_atomic

DEFAULT_SERIES = "6.12"
_IMAGE_PACKAGE = re.compile(r"^linux-image-(\d+\.\d+\.\d+)\+(\w+)-amd64-unsigned$")


log = logging.getLogger(__name__)


class KernelError(HarnessError):
    pass


@dataclasses.dataclass(frozen=True)
class Kernel:
    image: Path             # bzImage / vmlinuz
    config_path: Path | None
    modules_dir: Path | None  # .../lib/modules/<release>, None when all is built in
    release: str            # uname -r

    # -- construction -------------------------------------------------------
    @classmethod
    def from_path(cls, image, modules=None, kconfig=None) -> "Kernel":
        """A user's kernel: a bzImage, a build-kernel output directory, a
        kernel tree's root or its O= build directory (built in place,
        without modules_install: its .ko files are used where they lie).

        ``.config`` and ``modules`` are looked up beside the image (and at the
        top of a kernel tree, for ``arch/x86/boot/bzImage``) unless given.
        """
        given = Path(image).expanduser()
        path = given
        if path.is_dir():
            for inside in ("bzImage", "arch/x86/boot/bzImage"):
                if (path / inside).is_file():
                    path = path / inside
                    break
            else:
                raise KernelError(f"--kernel {image}: a directory with no bzImage and no arch/x86/boot/bzImage "
                                  "(expected a bzImage, a build-kernel output, or a kernel tree built with "
                                  "`make bzImage`)")
        if not path.is_file():
            raise KernelError(f"--kernel {image}: no such file (expected a bzImage, a build-kernel output, "
                              "or a kernel tree)")
        release = image_release(path)
        near = [path.parent]
        tree = None
        if path.parent.name == "boot" and path.parent.parent.parent.name == "arch":
            tree = path.parent.parent.parent.parent  # tree root (or O= directory)
            near.append(tree)
        elif path.parent.name == "boot":
            near.append(path.parent.parent)  # /boot/vmlinuz-X beside /lib/modules/X
        if kconfig is None:
            kconfig = next((d / ".config" for d in near if (d / ".config").is_file()), None)
            if kconfig is None:
                kconfig = next((d / f"config-{release}" for d in near
                                if (d / f"config-{release}").is_file()), None)
        elif not Path(kconfig).is_file():
            raise KernelError(f"--kconfig {kconfig}: no such file")
        found_modules: Path | None = None
        if modules is None:
            for d in near:
                for cand in (d / "lib/modules" / release, d / "modules" / release,
                             d / "modules/lib/modules" / release):
                    if (cand / "modules.dep").is_file():
                        found_modules = cand
                        break
                if found_modules:
                    break
            if found_modules is None and tree is not None and (tree / "modules.order").is_file():
                found_modules = tree_modules(tree, release)
        else:
            found_modules = Path(modules)
            if (found_modules / "lib/modules" / release).is_dir():
                found_modules = found_modules / "lib/modules" / release
            elif (found_modules / release).is_dir():
                found_modules = found_modules / release
            if not (found_modules / "modules.dep").is_file():
                raise KernelError(f"--modules {found_modules}: no modules.dep for release {release} "
                                  "(run `make modules_install INSTALL_MOD_PATH=DIR`, then give DIR)")
        return cls(path.resolve(), Path(kconfig).resolve() if kconfig else None,
                   found_modules.resolve() if found_modules else None, release)

    @classmethod
    def default(cls) -> "Kernel":
        root = default_kernel_dir()
        if root is None:
            raise KernelError("the default kernel is not fetched: run `harness kernel fetch` "
                              "(tools/setup does it) or give --kernel")
        return cls._from_unpacked_deb(root)

    @classmethod
    def _from_unpacked_deb(cls, root: Path) -> "Kernel":
        images = sorted(root.glob("boot/vmlinuz-*"))
        if not images:
            raise KernelError(f"{root}: unpacked kernel package has no boot/vmlinuz-*")
        release = images[-1].name[len("vmlinuz-"):]
        return cls(images[-1], root / "boot" / f"config-{release}",
                   root / "lib/modules" / release, release)

    # -- description --------------------------------------------------------
    @functools.cached_property
    def config(self) -> dict[str, str]:
        """The kernel's options: its .config, else the config it carries
        (CONFIG_IKCONFIG), else {} (unknown: asked of a booted guest)."""
        if self.config_path is not None and self.config_path.is_file():
            return parse_kconfig(self.config_path.read_text(errors="replace"))
        return parse_kconfig(embedded_config(self))

    @property
    def config_known(self) -> bool:
        return bool(self.config)

    def has(self, option: str) -> bool:
        """True when CONFIG option is built in or a module."""
        return self.config.get(_opt(option)) in ("y", "m")

    def builtin(self, option: str) -> bool:
        return self.config.get(_opt(option)) == "y"

    def provides(self, option: str, module: str | None = None) -> bool | None:
        """Whether a guest of this kernel can use ``option``: built in, or a
        module (named ``module``) among this kernel's modules.  None when
        the kernel's config is unknown."""
        if not self.config_known:
            return None
        value = self.config.get(_opt(option))
        if value == "y":
            return True
        if value == "m":
            return self.modules_dir is not None and (module is None or module.replace("-", "_") in self.module_names)
        return False

    def lacks(self, option: str, module: str | None = None) -> str:
        """Why provides() said no, in words."""
        value = self.config.get(_opt(option))
        if value == "m":
            where = (f"{module}.ko is not among its modules ({self.modules_dir})" if self.modules_dir else
                     "no modules were found beside it (give --modules, or build the tree's modules)")
            return f"built as a module, but {where}"
        source = self.config_path or "the config it carries"
        return f"not set in {source}"

    @functools.cached_property
    def module_names(self) -> frozenset:
        """Modules this kernel can load, and those built in."""
        names: set[str] = set()
        if self.modules_dir is not None:
            for listing in ("modules.dep", "modules.builtin"):
                f = self.modules_dir / listing
                if f.is_file():
                    names.update(_module_name(line.split(":", 1)[0]) for line in f.read_text().splitlines() if line)
        return frozenset(names)

    @property
    def time_scale(self) -> float:
        """How much longer things take on this kernel than on a plain one:
        KASAN and lockdep make a TCG guest several times slower.  Command
        timeouts and the tests' own time limits are multiplied by it;
        HARNESS_TIME_SCALE overrides it."""
        if os.environ.get("HARNESS_TIME_SCALE"):
            return float(os.environ["HARNESS_TIME_SCALE"])
        return 4.0 if self.builtin("CONFIG_KASAN") or self.builtin("CONFIG_PROVE_LOCKING") else 1.0

    @property
    def min_memory_mb(self) -> int:
        """A KASAN kernel keeps a shadow of memory and a quarantine of freed
        objects: under 2 GiB a guest runs out (allocations fail under traffic)."""
        return 2048 if self.builtin("CONFIG_KASAN") else 0

    @property
    def version(self) -> tuple[int, int]:
        m = re.match(r"(\d+)\.(\d+)", self.release)
        if m is None:
            raise KernelError(f"kernel release {self.release!r}: no major.minor version")
        major, minor = m.groups()
        return int(major), int(minor)

    @functools.cached_property
    def identity(self) -> str:
        """Content hash naming this kernel in caches."""
        h = hashlib.sha256()
        h.update(_file_digest(self.image).encode())
        if self.config_path and self.config_path.is_file():
            h.update(_file_digest(self.config_path).encode())
        h.update(self.release.encode())
        return h.hexdigest()[:16]

    @functools.cached_property
    def boot_image(self) -> Path:
        """What QEMU boots: the uncompressed vmlinux when it has a PVH entry
        (no decompression under TCG, ~1 s), else the bzImage.  A KASAN
        kernel boots from its bzImage: through the PVH entry it dies before
        its first console line (seen on 6.1)."""
        if self.builtin("CONFIG_KASAN"):
            return self.image
        vmlinux = self.image.parent / "vmlinux"
        if vmlinux.is_file() and has_pvh_entry(vmlinux):
            return vmlinux
        cached = cache_dir() / "vmlinux" / f"{self.identity}.elf"
        if not cached.exists():
            data = extract_vmlinux(self.image)
            if data is None or not has_pvh_entry_bytes(data):
                return self.image
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cached, data)
        return cached

    @property
    def pvh(self) -> bool:
        return self.boot_image != self.image

    def __str__(self):
        return f"{self.release} ({self.image})"


def _opt(option: str) -> str:
    return option if option.startswith("CONFIG_") else "CONFIG_" + option


def _module_name(path: str) -> str:
    base = os.path.basename(path.strip())
    for suffix in (".xz", ".zst", ".gz"):
        base = base.removesuffix(suffix)
    return base.removesuffix(".ko").replace("-", "_")


def embedded_config(kernel: "Kernel") -> str:
    """The .config a kernel built with CONFIG_IKCONFIG carries (what
    scripts/extract-ikconfig finds), cached per image; "" when it has none."""
    cached = cache_dir() / "ikconfig" / f"{_file_digest(kernel.image).split(':')[0][:16]}.config"
    if cached.exists():
        return cached.read_text()
    text = ""
    data = extract_vmlinux(kernel.image) or kernel.image.read_bytes()
    start = data.find(b"IKCFG_ST\x1f\x8b")
    if start >= 0:
        import gzip
        import zlib
        try:
            text = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[start + 8:]).decode(errors="replace")
        except (zlib.error, gzip.BadGzipFile):
            text = ""
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cached, text)
    return text


def tree_modules(tree: Path, release: str) -> Path | None:
    """A lib/modules/<release> directory for a kernel tree (or O= directory)
    built in place with `make modules` but never installed: symlinks to
    the tree's .ko files as modules.order lists them, and depmod's files.
    Cached by the modules' names, sizes and times; the tree is not written."""
    order = [l.strip() for l in (tree / "modules.order").read_text().splitlines() if l.strip()]
    kos = []
    for entry in order:
        ko = tree / (entry[:-2] + ".ko" if entry.endswith(".o") else entry)
        if ko.is_file():
            kos.append(ko)
    if not kos:
        return None
    digest = hashlib.sha256(release.encode())
    for ko in kos:
        st = ko.stat()
        digest.update(f"{ko} {st.st_size} {st.st_mtime_ns}\n".encode())
    for extra in ("modules.builtin", "modules.builtin.modinfo"):
        if (tree / extra).is_file():
            digest.update((tree / extra).read_bytes())
    base = cache_dir() / "tree-modules" / f"{release}-{digest.hexdigest()[:16]}"
    moddir = base / "lib/modules" / release
    if (moddir / "modules.dep").is_file():
        return moddir
    tmp = temp_beside(base)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp_moddir = tmp / "lib/modules" / release
    for ko in kos:
        link = tmp_moddir / "kernel" / ko.relative_to(tree)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(ko.resolve())
    tmp_moddir.mkdir(parents=True, exist_ok=True)
    for extra in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (tree / extra).is_file():
            text = (tree / extra).read_text(errors="replace")
            if extra == "modules.order":  # depmod wants kernel/<path>.ko
                text = "".join(f"kernel/{l[:-2] + '.ko' if l.endswith('.o') else l}\n"
                               for l in text.split() if l)
            elif extra == "modules.builtin":
                text = "".join(f"kernel/{l}\n" if not l.startswith("kernel/") else l + "\n"
                               for l in text.split() if l)
            (tmp_moddir / extra).write_text(text)
    cmd(["depmod", "-b", str(tmp), release], timeout=300)
    if base.exists():
        shutil.rmtree(base)
    os.replace(tmp, base)
    return moddir


@functools.lru_cache(maxsize=None)
def _file_digest(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{h.hexdigest()}:{st.st_size}"


def parse_kconfig(text: str) -> dict[str, str]:
    """``CONFIG_X=y`` lines to a dict; ``# CONFIG_X is not set`` maps to 'n'."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value.strip('"') if value.startswith('"') else value
        else:
            m = re.match(r"# (CONFIG_\w+) is not set", line)
            if m:
                out[m.group(1)] = "n"
    return out


def image_release(path: Path) -> str:
    """The release string (uname -r) stored in a bzImage's setup header."""
    with open(path, "rb") as f:
        head = f.read(0x10000)
    if head[0x202:0x206] != b"HdrS":
        raise KernelError(f"{path}: not a bzImage (no x86 boot header)")
    offset = int.from_bytes(head[0x20e:0x210], "little") + 0x200
    release = head[offset:offset + 256].split(b" ", 1)[0].split(b"\0", 1)[0]
    if not release:
        raise KernelError(f"{path}: bzImage has no version string")
    return release.decode()


# Compressed payloads a bzImage may carry: (magic, decompressor argv).
_PAYLOADS = [(b"\x28\xb5\x2f\xfd", ["zstd", "-dcq"]), (b"\xfd7zXZ\x00", ["xz", "-dcq"]),
             (b"\x1f\x8b\x08", ["gzip", "-dcq"]), (b"\x02\x21\x4c\x18", ["lz4", "-dcq"])]


def extract_vmlinux(image: Path) -> bytes | None:
    """The ELF vmlinux inside a bzImage (as scripts/extract-vmlinux finds it)."""
    data = image.read_bytes()
    for magic, argv in _PAYLOADS:
        pos = data.find(magic)
        while pos >= 0:
            try:
                out = subprocess.run(argv, input=data[pos:], capture_output=True, timeout=120).stdout
            except (OSError, subprocess.TimeoutExpired):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            pos = data.find(magic, pos + 1)
    return None


def has_pvh_entry(path: Path) -> bool:
    return has_pvh_entry_bytes(path.read_bytes())


def has_pvh_entry_bytes(elf: bytes) -> bool:
    """True when a 64-bit ELF has the Xen PHYS32_ENTRY note QEMU boots PVH from."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        off, end = p_offset, p_offset + p_filesz
        while off + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, off)
            name = elf[off + 12:off + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:  # XEN_ELFNOTE_PHYS32_ENTRY
                return True
            off += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


# -- the default kernel: Debian's generic image package ----------------------

def kernels_cache() -> Path:
    return cache_dir() / "kernels"


def default_kernel_dir() -> Path | None:
    found = sorted(kernels_cache().glob(f"debian-{DEFAULT_SERIES}.*/.complete"),
                   key=lambda p: _version_key(p.parent.name))
    return found[-1].parent if found else None


def _version_key(name: str):
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", name)]


def newest_image_package(series: str = DEFAULT_SERIES) -> str:
    out = cmd(["apt-cache", "pkgnames", f"linux-image-{series}."]).stdout
    names = [n for n in out.split() if _IMAGE_PACKAGE.match(n)]
    if not names:
        raise KernelError(f"apt knows no linux-image-{series}.*-amd64-unsigned package; "
                          "is bookworm-backports configured (tools/setup does it)?")
    return max(names, key=_version_key)


def fetch_default(series: str = DEFAULT_SERIES) -> Kernel:
    """apt-get download + unpack the newest generic image; idempotent."""
    existing = default_kernel_dir()
    if existing is not None:
        return Kernel._from_unpacked_deb(existing)
    package = newest_image_package(series)
    matched = _IMAGE_PACKAGE.match(package)
    assert matched is not None  # newest_image_package() only returns names it matches
    version = matched.group(1)
    dest = kernels_cache() / f"debian-{version}"
    log.info("fetching %s into %s", package, dest)
    kernels_cache().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kernels_cache(), prefix=f"harness-fetch-{os.getpid()}-") as tmp:
        cmd(["apt-get", "download", "-q", package], cwd=tmp)
        deb = next(Path(tmp).glob("*.deb"))
        unpacked = Path(tmp) / "root"
        cmd(["dpkg-deb", "-x", str(deb), str(unpacked)])
        if dest.exists():
            shutil.rmtree(dest)
        # Keep only what a guest needs: image, config, System.map, modules.
        os.rename(unpacked, dest)
    for junk in ("usr", "etc"):
        shutil.rmtree(dest / junk, ignore_errors=True)
    kernel = Kernel._from_unpacked_deb(dest)
    if kernel.modules_dir and not (kernel.modules_dir / "modules.dep").exists():
        cmd(["depmod", "-b", str(dest), kernel.release])
    (dest / ".complete").write_text(package + "\n")
    return kernel
