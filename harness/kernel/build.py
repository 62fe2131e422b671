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
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO
from collections.abc import Callable, Sequence

from ..endpoint import cmd, process_group
from ..util import REPO, HarnessError, cache_dir, temp_beside, temp_dir, write_atomic

ROOT = REPO
HARNESS_CONFIG = ROOT / "images" / "kconfig" / "harness.config"
# the other base: allnoconfig plus this (the nested guests' kernel)
MINIMAL_CONFIG = ROOT / "images" / "kconfig" / "minimal.config"
BUILDER_VERSION = "1"  # bump when the recipe below changes what it produces
ARTIFACTS = {"arch/x86/boot/bzImage": "bzImage", ".config": ".config", "System.map": "System.map",
             "vmlinux": "vmlinux"}
_OPTION = re.compile(r"^(CONFIG_\w+)=(.*)$|^# (CONFIG_\w+) is not set$")


log = logging.getLogger(__name__)


class BuildError(HarnessError):
    pass


@dataclasses.dataclass
class Source:
    name: str       # names the work directory and the output
    identity: str   # changes whenever the source does
    prepare: Callable[[Path], None]  # put a pristine tree in the work directory
    read: Callable[[str], bytes]     # one file of the pristine tree, by its path in it
    read_many: Callable[[Sequence[str]], dict[str, bytes]] | None = None  # several in one pass

    def files(self, paths: Sequence[str]) -> dict[str, bytes]:
        """The pristine files of ``paths`` that exist, by path."""
        if self.read_many is not None:
            return self.read_many(paths)
        found = {}
        for path in paths:
            try:
                found[path] = self.read(path)
            except (OSError, KeyError):
                continue
        return found


def debian_source(series: str) -> Source:
    """Debian's linux-source-<series> (6.1 from bookworm, 6.12 from
    bookworm-backports), installed with apt when missing."""
    if not re.fullmatch(r"\d+\.\d+", series):
        raise BuildError(f"--debian-source {series!r}: expected a series like 6.1 or 6.12")
    package = f"linux-source-{series}"
    tarball = Path(f"/usr/src/{package}.tar.xz")
    if not tarball.exists():
        log.info("build-kernel: installing %s with apt", package)
        release = [] if series == "6.1" else ["-t", "bookworm-backports"]
        result = cmd(["apt-get", "install", "-y", "--no-install-recommends", *release, package],
                     check=False, timeout=1800, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if result.returncode != 0 or not tarball.exists():
            raise BuildError(f"--debian-source {series}: apt-get install {package} failed "
                             f"(run tools/setup first for the backports suite):\n{result.stderr[-2000:]}")
    version = cmd(["dpkg-query", "-W", "-f=${Version}", package]).stdout.strip()

    def prepare(work: Path) -> None:
        work.mkdir(parents=True)
        cmd(["tar", "-xf", tarball, "-C", work, "--strip-components=1"], timeout=1800)

    def read(rel: str) -> bytes:
        found = cmd(["tar", "-xOf", tarball, f"{package}/{rel}"], check=False, timeout=600)
        if found.returncode != 0:
            raise FileNotFoundError(f"{tarball}: no {rel}")
        return found.stdout_bytes

    def read_many(paths: Sequence[str]) -> dict[str, bytes]:
        # one pass over the tarball: each read() decompresses all of it
        # temp_dir: a run killed here leaves a directory the next one reaps
        tmp = temp_dir("read")
        try:
            cmd(["tar", "-xf", tarball, "-C", tmp, "--strip-components=1", "--ignore-failed-read",
                 *(f"{package}/{p}" for p in paths)], check=False, timeout=600)
            return {p: (tmp / p).read_bytes() for p in paths if (tmp / p).is_file()}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Source(f"debian-{series}", f"{package}={version}", prepare, read, read_many)


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

    def prepare(work: Path) -> None:
        work.mkdir(parents=True)
        # the tree without its git data and build outputs; mrproper drops the rest
        with process_group(["tar", "-C", tree, "--exclude=.git", "--exclude=*.o", "--exclude=*.cmd",
                            "--exclude=*.ko", "-cf", "-", "."], stdout=subprocess.PIPE) as pack:
            cmd(["tar", "-C", work, "-xf", "-"], stdin=pack.stdout, timeout=1800)
            pack.wait()
        cmd(["make", "-C", work, "-s", "mrproper"], timeout=600)

    def read(rel: str) -> bytes:
        return (tree / rel).read_bytes()
    return Source(f"tree-{tree.name}", f"tree:{tree}:{digest.hexdigest()}", prepare, read)


def collection_config(source: Source, collection: str) -> Path:
    """A kselftest collection's config fragment
    (tools/testing/selftests/<collection>/config, what netdev's CI merges
    for it) from ``source``, as a file in the cache."""
    rel = f"tools/testing/selftests/{collection.strip('/')}/config"
    try:
        text = source.read(rel)
    except OSError:
        raise BuildError(f"--ksft-config {collection}: {source.identity} has no {rel}") from None
    out = cache_dir() / "ksft-configs" / f"{source.name}-{collection.strip('/').replace('/', '-')}-{_digest(text)[:12]}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, text)
    return out


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


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_key(source: Source, patches: list, fragments: list[Path]) -> str:
    """Names a build by what went into it: patches are paths or texts."""
    texts = [p.encode() if isinstance(p, str) else Path(p).read_bytes() for p in patches]
    digest = hashlib.sha256(json.dumps({
        "builder": BUILDER_VERSION, "source": source.identity,
        "patches": [_digest(t) for t in texts],
        "fragments": [_digest(f.read_bytes()) for f in fragments],
    }).encode())
    return digest.hexdigest()[:16]


def _check_inputs(patches, fragments, soft=(), base: Path = HARNESS_CONFIG) -> tuple[list, list[Path]]:
    checked: list[str | Path] = []
    for p in patches:
        if isinstance(p, str) and "\n" in p:
            checked.append(p)  # a patch's text (a mutant, a variant)
            continue
        path = Path(p).expanduser().resolve()
        if not path.is_file():
            raise BuildError(f"--patch {path}: no such file")
        checked.append(path)
    # the base first (harness.config, or minimal.config), then the wished-for
    # (soft) fragments, the caller's last (they win)
    fragments = [base, *soft, *(Path(f).expanduser().resolve() for f in fragments)]
    for f in fragments:
        if not f.is_file():
            raise BuildError(f"--config {f}: no such file")
    return checked, fragments


MINIMAL_SERIES = "6.12"


def minimal_kernel() -> Path | None:
    """The minimal guest kernel (Debian's linux-source-6.12, allnoconfig +
    minimal.config) when it is built (tools/setup builds it), else None;
    looked up without installing or building anything."""
    if not Path(f"/usr/src/linux-source-{MINIMAL_SERIES}.tar.xz").exists():
        return None
    source = debian_source(MINIMAL_SERIES)
    _, frags = _check_inputs((), (), (), MINIMAL_CONFIG)
    out = builds_dir() / f"{source.name}-{build_key(source, [], frags)}"
    return out if (out / "bzImage").is_file() else None


def builds_dir() -> Path:
    return cache_dir() / "builds"


def trees_dir() -> Path:
    return cache_dir() / "trees"


KEEP_TREES = 2  # prepared trees kept besides the one in use (each is a few GB)


def build(source: Source, *, patches=(), fragments=(), soft_fragments=(), jobs: int | None = None,
          minimal: bool = False) -> Path:
    """The output directory of a build with these inputs; built when not
    cached, on the prepared tree of this source and config.  An option of
    a soft fragment (a kselftest collection's config) that does not
    survive is named, not an error.  ``minimal``: allnoconfig +
    images/kconfig/minimal.config instead of defconfig + harness.config."""
    patches, frags = _check_inputs(patches, fragments, soft_fragments, _base(minimal))
    out = builds_dir() / f"{source.name}-{build_key(source, patches, frags)}"
    if (out / "bzImage").is_file():
        log.info("build-kernel: cached: %s", out)
        _name_missing(out)
        return out
    with Tree(source, fragments, soft_fragments, jobs=jobs, minimal=minimal) as tree:
        out = tree.build(patches)
    _name_missing(out)
    return out


SOFT_MISSING = "config-missing.txt"  # in a build's output: what a soft fragment asked for in vain


def _name_missing(out: Path):
    missing = (out / SOFT_MISSING).read_text().split("\n") if (out / SOFT_MISSING).exists() else []
    if any(missing):
        log.warning("build-kernel: options of the kselftest config that did not survive olddefconfig "
                    "(a dependency is off, or this kernel has no such option):\n  %s",
                    "\n  ".join(filter(None, missing)))


class Tree:
    """A prepared kernel tree for one source and config, kept in the cache
    and built incrementally: a build applies its patches to the pristine
    versions of the files they touch, rewrites only the files whose text
    differs from what the tree holds, and runs make, which recompiles
    those and relinks.  Variants of one patch (mutants, a patch without
    its fix) each cost one file's compile and a link.

        with Tree(source, fragments) as tree:
            out = tree.build([patch_path_or_text, ...])   # Kernel.from_path(out)

    Outputs land in the build cache under the same key whichever way they
    were built.  One build at a time per tree (a lock file)."""

    def __init__(self, source: Source, fragments=(), soft_fragments=(), *, jobs: int | None = None,
                 minimal: bool = False):
        self.source = source
        _, self.fragments = _check_inputs((), fragments, soft_fragments, _base(minimal))
        self.soft = [Path(f) for f in soft_fragments]
        self.jobs = jobs or os.cpu_count() or 1
        key = _digest(json.dumps({"builder": BUILDER_VERSION, "source": source.identity,
                                  "fragments": [_digest(f.read_bytes()) for f in self.fragments]}).encode())[:16]
        self.dir = trees_dir() / f"{source.name}-{key}"
        self.work = self.dir / "src"
        self.pristine = self.dir / "pristine"   # files as the source has them, saved before first change
        self._lock: IO[str] | None = None

    def __enter__(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        # make inherits this lock (pass_fds): a build whose harness was
        # killed keeps the tree until its last compiler is gone
        self._lock = lock = open(self.dir / ".lock", "w")
        if not _try_lock(lock):
            log.info("build-kernel: waiting for the build that holds %s", self.dir)
            fcntl.flock(lock, fcntl.LOCK_EX)
        (self.dir / ".used").touch()
        try:
            for scratch in self.dir.glob(".apply-*"):  # of a build killed mid-way (we hold the lock)
                shutil.rmtree(scratch, ignore_errors=True)
            if not (self.dir / ".ready").exists():
                self._prepare()
            _prune_trees(keep=self.dir)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _prepare(self):
        t0 = time.monotonic()
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.pristine, ignore_errors=True)
        log.info("build-kernel: preparing %s in %s", self.source.identity, self.work)
        self.source.prepare(self.work)
        self.pristine.mkdir(parents=True)
        _configure(self.work, self.fragments, self.soft, self._lock_fd())
        (self.dir / ".ready").write_text(f"{self.source.identity}\nprepared in {time.monotonic() - t0:.0f}s\n")

    def build(self, patches=()) -> Path:
        """Source + ``patches`` (paths or texts, in order), compiled."""
        patches, _ = _check_inputs(patches, ())
        out = builds_dir() / f"{self.source.name}-{build_key(self.source, patches, self.fragments)}"
        if (out / "bzImage").is_file():
            return out
        t0 = time.monotonic()
        texts = [p if isinstance(p, str) else p.read_text() for p in patches]
        touched = list(dict.fromkeys(f for t in texts for f in touched_files(t)))
        for rel in touched:  # first change to a file: keep the source's version
            saved = self.pristine / rel
            if not saved.exists() and not (self.pristine / (rel + ".absent")).exists():
                saved.parent.mkdir(parents=True, exist_ok=True)
                if (self.work / rel).exists():
                    # whole or not at all: a half copy would be taken for
                    # the source's file by every later build
                    tmp = temp_beside(saved)
                    shutil.copy2(self.work / rel, tmp)
                    os.replace(tmp, saved)
                else:
                    (self.pristine / (rel + ".absent")).touch()
        wanted = self._apply(texts, touched, patches)
        changed = []
        for rel in self._ever_touched():
            target = self.work / rel
            current = target.read_bytes() if target.exists() else None
            want = wanted.get(rel, self._pristine_bytes(rel))
            if want != current:
                changed.append(rel)
                if want is None:
                    target.unlink()
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(want)
        log.info("build-kernel: %s: %d patch(es), %d file(s) changed in the tree", out.name, len(texts), len(changed))
        if any(Path(rel).name.startswith("Kconfig") for rel in changed):
            _configure(self.work, self.fragments, self.soft, self._lock_fd())
        builds_dir().mkdir(parents=True, exist_ok=True)
        log_path = builds_dir() / f"{out.name}.log"
        _make(self.work, self.jobs, log_path, t0, lock_fd=self._lock_fd())
        _collect(self.work, out, log_path)
        soft_missing = self.work / SOFT_MISSING
        if soft_missing.exists():
            shutil.copy2(soft_missing, out / SOFT_MISSING)
        log.info("build-kernel: built: %s", out)
        return out

    def _lock_fd(self) -> int:
        assert self._lock is not None
        return self._lock.fileno()

    def _ever_touched(self) -> list[str]:
        found = []
        for p in self.pristine.rglob("*"):
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)  # a copy a killed build did not finish
                continue
            if p.is_file():
                rel = str(p.relative_to(self.pristine))
                found.append(rel[:-len(".absent")] if rel.endswith(".absent") else rel)
        return sorted(found)

    def _pristine_bytes(self, rel: str) -> bytes | None:
        saved = self.pristine / rel
        return saved.read_bytes() if saved.exists() else None

    def _apply(self, texts: list[str], touched: list[str], names: list) -> dict[str, bytes | None]:
        """The touched files' text after applying the patches, in order, to
        their pristine versions (in a scratch directory)."""
        scratch = Path(tempfile.mkdtemp(dir=self.dir, prefix=".apply-"))
        try:
            for rel in touched:
                if (self.pristine / rel).exists():
                    (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(self.pristine / rel, scratch / rel)
            for text, name in zip(texts, names, strict=False):
                patch_file = scratch / ".patch"
                patch_file.write_text(text)
                label = name if isinstance(name, Path) else "a patch given as text"
                result = cmd(["patch", "-p1", "--forward", "--batch", "-d", scratch, "-i", patch_file], check=False)
                if result.returncode != 0:
                    raise BuildError(f"--patch {label}: does not apply to {self.source.identity}:\n"
                                     f"{(result.stdout + result.stderr)[-3000:]}")
                patch_file.unlink()
            return {rel: (scratch / rel).read_bytes() if (scratch / rel).exists() else None for rel in touched}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _prune_trees(keep: Path):
    """Remove the least recently used prepared trees beyond KEEP_TREES."""
    if not trees_dir().is_dir():
        return
    others = [d for d in trees_dir().iterdir() if d.is_dir() and d != keep]
    others.sort(key=lambda d: (d / ".used").stat().st_mtime if (d / ".used").exists() else 0, reverse=True)
    for old in others[KEEP_TREES:]:
        with open(old / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # in use by another build
            log.info("build-kernel: removing the least recently used tree %s", old)
            shutil.rmtree(old, ignore_errors=True)


def build_env() -> dict:
    env = {**os.environ, "KBUILD_BUILD_TIMESTAMP": "harness", "KBUILD_BUILD_USER": "harness",
           "KBUILD_BUILD_HOST": "harness"}
    if shutil.which("ccache"):
        env["CCACHE_DIR"] = str(cache_dir() / "ccache")
    return env


def _make_argv(work: Path, jobs: int | None = None) -> list[str]:
    argv = ["make", "-C", str(work)]
    if jobs:
        argv += ["-j", str(jobs)]
    if shutil.which("ccache"):
        argv.append("CC=ccache gcc")
    return argv


def _base(minimal: bool) -> Path:
    return MINIMAL_CONFIG if minimal else HARNESS_CONFIG


def _configure(work: Path, fragments: list[Path], soft=(), lock_fd: int | None = None):
    env, make = build_env(), _make_argv(work)
    held: dict = {"pass_fds": (lock_fd,)} if lock_fd is not None else {}  # a killed run's make keeps the tree
    if fragments[0] == MINIMAL_CONFIG:
        # allnoconfig with every fragment as its "all" file: what is not
        # asked for is off
        allconfig = work / ".harness-allconfig"
        allconfig.write_text("".join(f.read_text() + "\n" for f in fragments))
        cmd([*make, "allnoconfig"], env={**env, "KCONFIG_ALLCONFIG": str(allconfig)}, timeout=600, **held)
    else:
        cmd([*make, "defconfig"], env=env, timeout=600, **held)
        cmd([*make, "kvm_guest.config"], env=env, timeout=600, **held)
        cmd([work / "scripts/kconfig/merge_config.sh", "-m", "-O", work, work / ".config", *fragments],
            env=env, cwd=work, timeout=600, **held)
    cmd([*make, "olddefconfig"], env=env, timeout=600, **held)
    strict = requested_options([f for f in fragments if f not in soft])
    lost = missing_options(requested_options(fragments), (work / ".config").read_text())
    required = [m for m in lost if m.split("=", 1)[0] in strict]
    if required:
        raise BuildError("build-kernel: these requested options did not survive olddefconfig "
                         "(a dependency is off, or the option does not exist in this kernel):\n  "
                         + "\n  ".join(required))
    (work / SOFT_MISSING).write_text("".join(m + "\n" for m in lost))  # all of them wished-for ones


def _try_lock(f) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _make(work: Path, jobs: int, log_path: Path, t0: float, lock_fd: int | None = None):
    """make bzImage in a process group of its own, holding ``lock_fd``;
    anything that ends the wait (Ctrl-C, SIGTERM) ends the group first."""
    make = _make_argv(work, jobs)
    log.info("build-kernel: compiling with -j%d%s; log: %s", jobs, " and ccache" if "CC=ccache gcc" in make else "",
             log_path)
    with open(log_path, "w") as out:
        try:
            with process_group([*make, "bzImage"], env=build_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, pass_fds=() if lock_fd is None else (lock_fd,)) as proc:
                last, shown, units = "", time.monotonic(), 0
                assert proc.stdout is not None
                for line in proc.stdout:
                    out.write(line)
                    if line.startswith("  CC "):
                        units += 1
                        last = line.strip()
                    if time.monotonic() - shown > 15:
                        shown = time.monotonic()
                        log.info("build-kernel: [%4.0fs] %d files compiled; %s", shown - t0, units, last)
                rc = proc.wait()
        except BaseException:
            log.info("build-kernel: make stopped")
            raise
    if rc != 0:
        text = log_path.read_text(errors="replace").splitlines()
        errors = [i for i, line in enumerate(text) if "error:" in line or "Error " in line]
        first = errors[0] if errors else max(0, len(text) - 30)
        raise BuildError("build-kernel: make failed:\n" + "\n".join(text[max(0, first - 5):first + 25])
                         + f"\nfull log: {log_path}")
    log.info("build-kernel: compiled in %.0fs", time.monotonic() - t0)


GCOV_NOTES = "gcno"  # in a gcov build's output: the profiled objects' notes, by path in the tree


def _collect(work: Path, out: Path, log_path: Path):
    """Copy the artifacts into ``out`` atomically (a half-written output is
    never taken for a build)."""
    tmp = temp_beside(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for src, dst in ARTIFACTS.items():
        shutil.copy2(work / src, tmp / dst)
    shutil.copy2(log_path, tmp / "build.log")
    if "CONFIG_GCOV_KERNEL=y" in (work / ".config").read_text():
        # a gcov build's notes belong to it: the next build in the tree replaces them
        for gcno in work.rglob("*.gcno"):
            rel = gcno.relative_to(work)
            (tmp / GCOV_NOTES / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(gcno, tmp / GCOV_NOTES / rel)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log_path.unlink()


def touched_files(patch_text: str) -> list[str]:
    """Paths (relative to the tree, -p1) a unified diff creates, changes or removes."""
    out, old = [], None
    for line in patch_text.splitlines():
        if line.startswith("--- "):
            old = line[4:].split("\t")[0].strip()
        elif line.startswith("+++ ") and old is not None:
            new = line[4:].split("\t")[0].strip()
            path = old if new == "/dev/null" else new
            out.append(path.split("/", 1)[1] if "/" in path else path)
            old = None
    return list(dict.fromkeys(out))


def build_tree(tree: Path, jobs: int | None = None) -> Path:
    """A user's tree built for `harness run --build`, incrementally, and only
    when its source changed since the last build (what `vng --build` does):
    in place with the tree's own .config when it has one, else in an O=
    directory under the cache with defconfig + kvm_guest.config +
    harness.config.  Returns what --kernel takes (the tree, or the O= dir)."""
    tree = Path(tree).expanduser().resolve()
    source = tree_source(tree)  # checks that it is a kernel tree
    in_place = (tree / ".config").is_file()
    key = f"{tree.name}-{_digest(str(tree).encode())[:8]}"
    out = tree if in_place else cache_dir() / "tree-builds" / key
    stamp = cache_dir() / "tree-builds" / f"{key}.built"  # not in the user's tree
    stamp.parent.mkdir(parents=True, exist_ok=True)
    with open(stamp.with_suffix(".lock"), "w") as lock:  # one build of a tree at a time
        if not _try_lock(lock):
            log.info("build-kernel: waiting for the other build of %s", tree)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text().strip() == source.identity:
            log.info("build-kernel: %s is unchanged since its last build", tree)
            return out
        _build_tree(tree, out, in_place, stamp, source, jobs, lock.fileno())
    return out


def _build_tree(tree: Path, out: Path, in_place: bool, stamp: Path, source: Source, jobs: int | None,
                lock_fd: int):
    out.mkdir(parents=True, exist_ok=True)
    env = build_env()
    make = [*_make_argv(tree), *([] if in_place else [f"O={out}"])]
    if not in_place and not (out / ".config").is_file():
        cmd([*make, "defconfig", "kvm_guest.config"], env=env, timeout=600)
        cmd([tree / "scripts/kconfig/merge_config.sh", "-m", "-O", out, out / ".config", HARNESS_CONFIG],
            env=env, cwd=out, timeout=600)
        cmd([*make, "olddefconfig"], env=env, timeout=600)
    t0 = time.monotonic()
    log.info("build-kernel: make bzImage modules in %s", out)
    result = cmd([*make, f"-j{jobs or os.cpu_count() or 1}", "bzImage", "modules"], env=env, check=False,
                 timeout=7200, pass_fds=(lock_fd,))
    if result.rc != 0:
        errors = [l for l in (result.stdout + result.stderr).splitlines() if "error" in l.lower()]
        raise BuildError(f"build-kernel: make failed in {tree}:\n" + "\n".join(errors[:20] or
                                                                              result.stderr.splitlines()[-20:]))
    write_atomic(stamp, source.identity + "\n")
    log.info("build-kernel: built in %.0fs", time.monotonic() - t0)
