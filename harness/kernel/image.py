"""What a kernel image file says about itself, read without booting it: the
release in a bzImage's setup header, the vmlinux inside it, the PVH entry
QEMU can boot, the .config it carries (CONFIG_IKCONFIG)."""
from __future__ import annotations

import functools
import hashlib
import struct
import subprocess
from pathlib import Path

from ..util import HarnessError, cache_dir, write_atomic


class KernelError(HarnessError):
    pass


@functools.cache
def file_digest(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{h.hexdigest()}:{st.st_size}"


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


def embedded_config(image: Path) -> str:
    """The .config a kernel built with CONFIG_IKCONFIG carries (what
    scripts/extract-ikconfig finds), cached per image; "" when it has none."""
    cached = cache_dir() / "ikconfig" / f"{file_digest(image).split(':')[0][:16]}.config"
    if cached.exists():
        return cached.read_text()
    text = ""
    data = extract_vmlinux(image) or image.read_bytes()
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
