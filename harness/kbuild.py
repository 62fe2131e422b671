"""Build a guest kernel for the harness: from a tree or Debian's source
package, with patches and config fragments, cached by what went into it.

    out = build(tree_source("~/linux"), patches=[...], fragments=[...])
    Kernel.from_path(out)      # out/ holds bzImage, .config, System.map, vmlinux

The config is defconfig + kvm_guest.config merged with
images/kconfig/harness.config (everything a guest needs built in, cheap
netdev debugging, no DRM/sound/USB/wireless) and the caller's fragments;
after olddefconfig every requested option is checked.  Patches go on a
copy, never on the user's tree.  ccache is used when installed, with a
fixed work path so that rebuilds of the same source hit it.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .util import HarnessError, cache_dir, cmd

ROOT = Path(__file__).resolve().parent.parent
HARNESS_CONFIG = ROOT / "images" / "kconfig" / "harness.config"
BUILDER_VERSION = "1"  # bump when the recipe below changes what it produces
ARTIFACTS = {"arch/x86/boot/bzImage": "bzImage", ".config": ".config", "System.map": "System.map",
             "vmlinux": "vmlinux"}
_OPTION = re.compile(r"^(CONFIG_\w+)=(.*)$|^# (CONFIG_\w+) is not set$")


class BuildError(HarnessError):
    pass


@dataclasses.dataclass
class Source:
    name: str       # names the work directory and the output
    identity: str   # changes whenever the source does
    prepare: object  # callable(work_dir): put a pristine tree there


def debian_source(series: str, log=print) -> Source:
    """Debian's linux-source-<series> (6.1 from bookworm, 6.12 from
    bookworm-backports), installed with apt when missing."""
    if not re.fullmatch(r"\d+\.\d+", series):
        raise BuildError(f"--debian-source {series!r}: expected a series like 6.1 or 6.12")
    package = f"linux-source-{series}"
    tarball = Path(f"/usr/src/{package}.tar.xz")
    if not tarball.exists():
        log(f"build-kernel: installing {package} with apt")
        release = [] if series == "6.1" else ["-t", "bookworm-backports"]
        result = cmd(["apt-get", "install", "-y", "--no-install-recommends", *release, package],
                     check=False, timeout=1800, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if result.returncode != 0 or not tarball.exists():
            raise BuildError(f"--debian-source {series}: apt-get install {package} failed "
                             f"(run tools/setup first for the backports suite):\n{result.stderr[-2000:]}")
    version = cmd(["dpkg-query", "-W", "-f=${Version}", package]).stdout.strip()

    def prepare(work: Path):
        work.mkdir(parents=True)
        cmd(["tar", "-xf", tarball, "-C", work, "--strip-components=1"], timeout=1800)
    return Source(f"debian-{series}", f"{package}={version}", prepare)


def tree_source(path) -> Source:
    """A user's kernel tree, identified by its git HEAD and uncommitted diff
    (or, outside git, by every file's size and mtime)."""
    tree = Path(path).expanduser().resolve()
    if not (tree / "Makefile").is_file() or not (tree / "net" / "core").is_dir():
        raise BuildError(f"--tree {path}: not a kernel tree (no Makefile and net/core there)")
    digest = hashlib.sha256()
    if (tree / ".git").exists():
        digest.update(cmd(["git", "-C", tree, "rev-parse", "HEAD"]).stdout.encode())
        digest.update(cmd(["git", "-C", tree, "diff", "HEAD", "--binary"], timeout=600).stdout.encode())
        digest.update(cmd(["git", "-C", tree, "status", "--porcelain"], timeout=600).stdout.encode())
    else:
        for p in sorted(tree.rglob("*")):
            if p.is_file() and p.suffix not in (".o", ".cmd", ".a", ".ko"):
                st = p.stat()
                digest.update(f"{p.relative_to(tree)} {st.st_size} {st.st_mtime_ns}\n".encode())

    def prepare(work: Path):
        work.mkdir(parents=True)
        # the tree without its git data and build outputs; mrproper drops the rest
        pack = subprocess.Popen(["tar", "-C", tree, "--exclude=.git", "--exclude=*.o", "--exclude=*.cmd",
                                 "--exclude=*.ko", "-cf", "-", "."], stdout=subprocess.PIPE)
        cmd(["tar", "-C", work, "-xf", "-"], stdin=pack.stdout, timeout=1800)
        pack.wait()
        cmd(["make", "-C", work, "-s", "mrproper"], timeout=600)
    return Source(f"tree-{tree.name}", f"tree:{tree}:{digest.hexdigest()}", prepare)


def parse_options(text: str) -> dict[str, str]:
    """CONFIG_X -> value ("n" for "is not set") of a fragment or a .config."""
    out = {}
    for line in text.splitlines():
        m = _OPTION.match(line.strip())
        if m:
            out[m.group(1) or m.group(3)] = m.group(2) if m.group(1) else "n"
    return out


def requested_options(fragments: list[Path]) -> dict[str, str]:
    """What the fragments ask for, the last one winning."""
    wanted = {}
    for fragment in fragments:
        wanted.update(parse_options(fragment.read_text()))
    return wanted


def missing_options(wanted: dict[str, str], config_text: str) -> list[str]:
    """Requested options olddefconfig did not keep, as "CONFIG_X=want (got ...)"."""
    have = parse_options(config_text)
    return [f"{name}={value} (got {have.get(name, 'n')})" for name, value in wanted.items()
            if have.get(name, "n").strip('"') != value.strip('"')]


def build_key(source: Source, patches: list[Path], fragments: list[Path]) -> str:
    digest = hashlib.sha256(json.dumps({
        "builder": BUILDER_VERSION, "source": source.identity,
        "patches": [hashlib.sha256(p.read_bytes()).hexdigest() for p in patches],
        "fragments": [hashlib.sha256(f.read_bytes()).hexdigest() for f in fragments],
    }).encode())
    return digest.hexdigest()[:16]


def build(source: Source, *, patches=(), fragments=(), jobs: int | None = None, log=print) -> Path:
    """The output directory of a build with these inputs; built when not cached."""
    patches = [Path(p).expanduser().resolve() for p in patches]
    fragments = [HARNESS_CONFIG, *(Path(f).expanduser().resolve() for f in fragments)]
    for kind, paths in (("--patch", patches), ("--config", fragments)):
        for p in paths:
            if not p.is_file():
                raise BuildError(f"{kind} {p}: no such file")
    out = cache_dir() / "builds" / f"{source.name}-{build_key(source, patches, fragments)}"
    if (out / "bzImage").is_file():
        log(f"build-kernel: cached: {out}")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per cache
        if (out / "bzImage").is_file():
            return out
        work = cache_dir() / "work" / source.name
        shutil.rmtree(work, ignore_errors=True)
        log_path = out.parent / f"{out.name}.log"
        try:
            _build_in(work, source, patches, fragments, jobs or os.cpu_count() or 1, log_path, log)
            tmp = out.parent / f".{out.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for src, dst in ARTIFACTS.items():
                shutil.copy2(work / src, tmp / dst)
            shutil.copy2(log_path, tmp / "build.log")
            os.replace(tmp, out)
            log_path.unlink()
        finally:
            shutil.rmtree(work, ignore_errors=True)  # the objects live on in ccache
    log(f"build-kernel: built: {out}")
    return out


def _build_in(work: Path, source: Source, patches, fragments, jobs: int, log_path: Path, log):
    t0 = time.monotonic()
    log(f"build-kernel: preparing {source.identity} in {work}")
    source.prepare(work)
    for patch in patches:
        result = cmd(["patch", "-p1", "--forward", "--batch", "-d", work, "-i", patch], check=False)
        if result.returncode != 0:
            raise BuildError(f"--patch {patch}: does not apply to {source.identity}:\n"
                             f"{(result.stdout + result.stderr)[-3000:]}")
        log(f"build-kernel: applied {patch.name}")
    env = {**os.environ, "KBUILD_BUILD_TIMESTAMP": "harness", "KBUILD_BUILD_USER": "harness",
           "KBUILD_BUILD_HOST": "harness"}
    make = ["make", "-C", str(work), "-j", str(jobs)]
    if shutil.which("ccache"):
        env["CCACHE_DIR"] = str(cache_dir() / "ccache")
        make.append("CC=ccache gcc")
    cmd([*make[:3], "defconfig"], env=env, timeout=600)
    cmd([*make[:3], "kvm_guest.config"], env=env, timeout=600)
    cmd([work / "scripts/kconfig/merge_config.sh", "-m", "-O", work, work / ".config", *fragments],
        env=env, cwd=work, timeout=600)
    cmd([*make[:3], "olddefconfig"], env=env, timeout=600)
    missing = missing_options(requested_options(fragments), (work / ".config").read_text())
    if missing:
        raise BuildError("build-kernel: these requested options did not survive olddefconfig "
                         "(a dependency is off, or the option does not exist in this kernel):\n  "
                         + "\n  ".join(missing))
    log(f"build-kernel: config ready ({time.monotonic() - t0:.0f}s); compiling with -j{jobs}"
        f"{' and ccache' if 'CC=ccache gcc' in make else ''}; log: {log_path}")
    with open(log_path, "w") as out:
        proc = subprocess.Popen([*make, "bzImage"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        last, shown, units = "", time.monotonic(), 0
        for line in proc.stdout:
            out.write(line)
            if line.startswith("  CC "):
                units += 1
                last = line.strip()
            if time.monotonic() - shown > 15:
                shown = time.monotonic()
                log(f"build-kernel: [{shown - t0:4.0f}s] {units} files compiled; {last}")
        rc = proc.wait()
    if rc != 0:
        text = log_path.read_text(errors="replace").splitlines()
        errors = [i for i, line in enumerate(text) if "error:" in line or "Error " in line]
        first = errors[0] if errors else max(0, len(text) - 30)
        raise BuildError("build-kernel: make failed:\n" + "\n".join(text[max(0, first - 5):first + 25])
                         + f"\nfull log: {log_path}")
    log(f"build-kernel: compiled in {time.monotonic() - t0:.0f}s")


def stderr_log(message: str):
    print(message, file=sys.stderr, flush=True)
