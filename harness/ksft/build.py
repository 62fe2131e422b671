"""Build and install the kernel's selftests with the kernel's own makefiles,
cached by what went into them.

    installed = install(source_for("debian:6.12"), ["net"])
    installed.path / "kselftest-list.txt"       # what run_kselftest.sh would run
    installed.build_failures                    # programs whose build failed (named, never hidden)

The recipe is the one kselftest documents: ``make headers`` in the tree,
then ``make -C tools/testing/selftests TARGETS=... install``.  Make runs
with ``-i`` so that one program that does not build (a missing library,
an old compiler) costs only that program: the rest is installed, the
failed ones are listed in ``build.json`` and the test whose program is
missing fails with the build log's lines for it.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

from ..endpoint import cmd
from ..util import HarnessError, cache_dir
from ..kernel.build import Source, build_env, debian_source, tree_source

BUILDER_VERSION = "1"  # bump when the recipe below changes what it installs
# make's "make[2]: [Makefile:12: /abs/out/net/foo] Error 1 (ignored)" under -i
_FAILED = re.compile(r"^make\[\d+\]: \[(?:[^\]]*?: )?(?P<target>[^\]]+)\] Error \d+ \(ignored\)$")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Installed:
    path: Path                   # INSTALL_PATH: run_kselftest.sh, kselftest-list.txt, <collection>/
    source: str                  # the source's identity
    targets: tuple[str, ...]
    build_failures: tuple[str, ...]  # paths (relative to the install) of programs that did not build
    build_log: Path

    @property
    def list_text(self) -> str:
        return (self.path / "kselftest-list.txt").read_text()


def source_for(spec: str) -> Source:
    """``debian:<series>`` (Debian's linux-source package) or a kernel tree."""
    if spec.startswith("debian:"):
        return debian_source(spec.split(":", 1)[1])
    if not Path(spec).expanduser().is_dir():
        raise HarnessError(f"--ksft-source {spec}: expected a kernel tree or debian:<series> (e.g. debian:6.12)")
    return tree_source(spec)


def failed_programs(build_log: str, build_dir: str) -> list[str]:
    """The outputs make gave up on (under -i), relative to the build
    directory, in log order; a collection's "all" is not a program."""
    out: list[str] = []
    for line in build_log.splitlines():
        m = _FAILED.match(line.strip())
        if not m:
            continue
        target = m.group("target")
        if target.startswith(build_dir.rstrip("/") + "/"):
            target = target[len(build_dir.rstrip("/")) + 1:]
        if target in ("all", "install", "headers") or target in out:
            continue
        out.append(target)
    return out


def _key(source: Source, targets: list[str]) -> str:
    text = json.dumps([BUILDER_VERSION, source.identity, sorted(targets)])
    return f"{source.name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def install(source: Source, targets: list[str], *, jobs: int | None = None) -> Installed:
    """The installed selftests of ``targets`` from ``source``: built once,
    then read from the cache."""
    if not targets:
        raise HarnessError("--ksft: expected at least one collection (e.g. net or net,net/forwarding)")
    root = cache_dir() / "ksft" / _key(source, targets)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second pytest on the same source waits for the first build
        done = root / "build.json"
        if not done.exists():
            _build(source, targets, root, jobs or os.cpu_count() or 1)
        meta = json.loads(done.read_text())
    return Installed(root / "install", meta["source"], tuple(meta["targets"]), tuple(meta["build_failures"]),
                     root / "build.log")


def _build(source: Source, targets: list[str], root: Path, jobs: int):
    work, out, log_path = root / "src", root / "install", root / "build.log"
    for stale in (work, out):
        shutil.rmtree(stale, ignore_errors=True)
    t0 = time.monotonic()
    log.info("ksft: preparing %s", source.identity)
    source.prepare(work)
    try:
        with open(log_path, "wb") as log_file:
            log.info("ksft: make headers, then selftests %s (log: %s)", ",".join(targets), log_path)
            cmd(["make", "-C", work, f"-j{jobs}", "headers"], stdout=log_file, stderr=log_file,
                capture_output=False, timeout=1800, env=build_env())
            cmd(["make", "-i", "-C", work / "tools" / "testing" / "selftests", f"-j{jobs}",
                 f"TARGETS={' '.join(targets)}", f"KSFT_INSTALL_PATH={out}", "install"],
                stdout=log_file, stderr=log_file, capture_output=False, check=False, timeout=3600, env=build_env())
        if not (out / "kselftest-list.txt").exists():
            raise HarnessError(f"ksft: the selftests of {','.join(targets)} did not install from "
                               f"{source.identity}; see {log_path}")
        failures = failed_programs(log_path.read_text(errors="replace"),
                                   str(work / "tools" / "testing" / "selftests"))
        (root / "build.json").write_text(json.dumps({
            "source": source.identity, "targets": targets, "build_failures": failures,
            "seconds": round(time.monotonic() - t0, 1)}, indent=1) + "\n")
        log.info("ksft: built in %.0f s; %d program(s) did not build", time.monotonic() - t0, len(failures))
    finally:
        shutil.rmtree(work, ignore_errors=True)
