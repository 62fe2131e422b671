"""A guest kernel: its image, modules, .config and release, found from a path
a user gives (a bzImage, a build output, a kernel tree) or the default
Debian image (``debian``), and described: options, modules, time scale,
what QEMU boots.

A kernel is a bzImage plus, where it has loadable modules, the
``lib/modules/<release>`` tree built with it, plus its ``.config``.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import shutil
from pathlib import Path

from ..endpoint import cmd
from ..util import cache_dir, temp_beside, write_atomic
from .debian import DEFAULT_SERIES, default_kernel_dir, fetch, unpacked_release
from .image import (KernelError, embedded_config, extract_vmlinux, file_digest, has_pvh_entry,
                    has_pvh_entry_bytes, image_release)

__all__ = ["DEFAULT_SERIES", "Kernel", "KernelError", "KernelPathError", "fetch_default", "image_release",
           "parse_kconfig", "tree_modules"]


class KernelPathError(KernelError):
    """A path given for a kernel's ``image``, ``modules`` or ``kconfig`` is not
    what was expected; ``field`` says which, so that the caller can name the
    option or the topology key it came from."""

    def __init__(self, field: str, path, why: str):
        super().__init__(f"{path}: {why}")
        self.field, self.path = field, path


@dataclasses.dataclass(frozen=True)
class Kernel:
    image: Path             # bzImage / vmlinuz
    config_path: Path | None
    modules_dir: Path | None  # .../lib/modules/<release>, None when all is built in
    release: str            # uname -r

    # -- construction -------------------------------------------------------
    @classmethod
    def from_path(cls, image, modules=None, kconfig=None) -> Kernel:
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
                raise KernelPathError("image", image, "a directory with no bzImage and no arch/x86/boot/bzImage "
                                      "(expected a bzImage, a build-kernel output, or a kernel tree built with "
                                      "`make bzImage`)")
        if not path.is_file():
            raise KernelPathError("image", image, "no such file (expected a bzImage, a build-kernel output, "
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
            raise KernelPathError("kconfig", kconfig, "no such file")
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
                raise KernelPathError("modules", found_modules, f"no modules.dep for release {release} "
                                      "(run `make modules_install INSTALL_MOD_PATH=DIR`, then give DIR)")
        return cls(path.resolve(), Path(kconfig).resolve() if kconfig else None,
                   found_modules.resolve() if found_modules else None, release)

    @classmethod
    def default(cls) -> Kernel:
        root = default_kernel_dir()
        if root is None:
            raise KernelError("the default kernel is not fetched: run `harness kernel fetch` "
                              "(tools/setup does it) or give --kernel")
        return cls.from_unpacked_deb(root)

    @classmethod
    def from_unpacked_deb(cls, root: Path) -> Kernel:
        release = unpacked_release(root)
        return cls(root / "boot" / f"vmlinuz-{release}", root / "boot" / f"config-{release}",
                   root / "lib/modules" / release, release)

    # -- description --------------------------------------------------------
    @functools.cached_property
    def config(self) -> dict[str, str]:
        """The kernel's options: its .config, else the config it carries
        (CONFIG_IKCONFIG), else {} (unknown: asked of a booted guest)."""
        if self.config_path is not None and self.config_path.is_file():
            return parse_kconfig(self.config_path.read_text(errors="replace"))
        return parse_kconfig(embedded_config(self.image))

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
        h.update(file_digest(self.image).encode())
        if self.config_path and self.config_path.is_file():
            h.update(file_digest(self.config_path).encode())
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


def fetch_default(series: str = DEFAULT_SERIES) -> Kernel:
    """Debian's generic image of ``series``, fetched once (``debian.fetch``)."""
    return Kernel.from_unpacked_deb(fetch(series))
