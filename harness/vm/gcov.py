"""gcov data out of a guest whose kernel has CONFIG_GCOV_KERNEL: the
counters of the objects built with GCOV_PROFILE, read after each test and
then reset, so that each test's lines are its own.

The kernel mirrors its build tree under /sys/kernel/debug/gcov: one
``.gcda`` file per profiled object, at the path the object had when it was
built (``<objtree>/net/core/dev.gcda``), read as the gcda file gcc's
runtime would have written.  It is binary: the guest sends each file
base64-encoded after a header line naming it.

    gcov = Gcov(guest)
    if gcov.available:
        files = gcov.collect()   # {"root/.../src/net/core/dev.gcda": b"adcg..."}; counters reset
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path

from ..util import HarnessError

GCOV = "/sys/kernel/debug/gcov"
_HEAD = re.compile(r"^gcda (\S+\.gcda) (\d+)$")
GCDA_MAGIC = b"adcg"  # gcc's "gcda" magic as a little-endian word
MAX_FILE = 64 << 20


class GcovError(HarnessError):
    pass


def parse_gcda_dump(text: str) -> dict[str, bytes]:
    """The collection's output: per file a ``gcda PATH SIZE`` line and a
    line of base64.  The path is relative to the gcov directory, without
    ``..``; the data must decode to SIZE bytes of gcda (its magic first).
    Anything else is an error naming the line: the bytes come from the guest."""
    out: dict[str, bytes] = {}
    lines = text.splitlines()
    n = 0
    while n < len(lines):
        head = lines[n]
        if not head.strip():
            n += 1
            continue
        m = _HEAD.match(head)
        if m is None:
            raise GcovError(f"gcov dump line {n + 1}: {head[:80]!r}: expected 'gcda PATH SIZE'")
        path, size = m.group(1), int(m.group(2))
        parts = path.split("/")
        if path.startswith("/") or ".." in parts or "" in parts:
            raise GcovError(f"gcov dump line {n + 1}: {path!r}: expected a relative path without '..'")
        if size > MAX_FILE:
            raise GcovError(f"gcov dump line {n + 1}: {path}: {size} bytes, over the {MAX_FILE} bytes expected")
        if n + 1 >= len(lines):
            raise GcovError(f"gcov dump line {n + 1}: {path}: its data line is missing")
        try:
            data = base64.b64decode(lines[n + 1].strip(), validate=True)
        except (binascii.Error, ValueError) as e:
            raise GcovError(f"gcov dump line {n + 2}: {path}: not base64 ({e})") from None
        if len(data) != size or not data.startswith(GCDA_MAGIC):
            raise GcovError(f"gcov dump line {n + 2}: {path}: {len(data)} bytes"
                            f"{'' if data.startswith(GCDA_MAGIC) else ' without the gcda magic'}; "
                            f"expected {size} bytes of gcda")
        if path in out:
            raise GcovError(f"gcov dump line {n + 1}: {path} twice")
        out[path] = data
        n += 2
    return out


# one command for every file: cat (debugfs sizes read 0), then base64 of what was read
_COLLECT = (f"cd {GCOV} && find . -name '*.gcda' -type f | sort | while read -r f; do "
            f"cat \"$f\" > /tmp/.gcda && echo \"gcda ${{f#./}} $(wc -c < /tmp/.gcda)\" && base64 -w0 /tmp/.gcda && "
            f"echo; done; rm -f /tmp/.gcda; echo 1 > {GCOV}/reset")


class Gcov:
    """A guest's gcov counters."""

    def __init__(self, where):
        self.where = where
        probe = where.run(f"mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug; "
                          f"test -e {GCOV}/reset")
        self.available = probe.rc == 0

    def collect(self) -> dict[str, bytes]:
        """Every profiled object's counters since the previous collection
        (or the boot), then reset."""
        result = self.where.run(_COLLECT, timeout=120)
        if result.rc != 0:
            raise GcovError(f"{self.where.name}: reading {GCOV} failed ({result.rc}): "
                            f"{result.stderr.strip()[:200]}")
        return parse_gcda_dump(result.stdout)

    def reset(self) -> None:
        self.where.check(f"echo 1 > {GCOV}/reset")


class GcovStore:
    """Where a run's collections go (pytest --gcov-dir DIR): one directory
    per collection, in run order, and index.json naming each one's test
    and guest (harness.catching.coverage reads them back)."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.index: list[dict] = []

    def save(self, test: str, guest: str, files: dict[str, bytes]) -> None:
        if not files:
            return
        name = f"{len(self.index) + 1:04d}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{test}-{guest}")[-100:]
        for rel, data in files.items():
            path = self.root / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.index.append({"dir": name, "test": test, "guest": guest})
        tmp = self.root / ".index.json.tmp"
        tmp.write_text(json.dumps(self.index, indent=1) + "\n")
        tmp.replace(self.root / "index.json")
