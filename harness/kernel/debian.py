"""The default kernel: Debian's generic image package (linux-image-6.12.*
from bookworm-backports), fetched once with ``apt-get download`` into the
cache and unpacked there.  Knows files and packages, not ``Kernel``."""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..endpoint import cmd
from ..util import cache_dir
from .image import KernelError

DEFAULT_SERIES = "6.12"
_IMAGE_PACKAGE = re.compile(r"^linux-image-(\d+\.\d+\.\d+)\+(\w+)-amd64-unsigned$")

log = logging.getLogger(__name__)


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


def unpacked_release(root: Path) -> str:
    """The release of an unpacked image package (its boot/vmlinuz-RELEASE)."""
    images = sorted(root.glob("boot/vmlinuz-*"))
    if not images:
        raise KernelError(f"{root}: unpacked kernel package has no boot/vmlinuz-*")
    return images[-1].name[len("vmlinuz-"):]


def fetch(series: str = DEFAULT_SERIES) -> Path:
    """apt-get download + unpack the newest generic image; idempotent.  The
    unpacked package's root: boot/vmlinuz-R, boot/config-R, lib/modules/R."""
    existing = default_kernel_dir()
    if existing is not None:
        return existing
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
    release = unpacked_release(dest)
    if (dest / "lib/modules" / release).is_dir() and not (dest / "lib/modules" / release / "modules.dep").exists():
        cmd(["depmod", "-b", str(dest), release])
    (dest / ".complete").write_text(package + "\n")
    return dest
