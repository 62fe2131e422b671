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

from .util import HarnessError, cache_dir, cmd

ROOT = Path(__file__).resolve().parent.parent
HARNESS_CONFIG = ROOT / "images" / "kconfig" / "harness.config"
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
    prepare: object  # callable(work_dir): put a pristine tree there


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


def _check_inputs(patches, fragments) -> tuple[list[Path], list[Path]]:
    patches = [Path(p).expanduser().resolve() for p in patches]
    fragments = [HARNESS_CONFIG, *(Path(f).expanduser().resolve() for f in fragments)]
    for kind, paths in (("--patch", patches), ("--config", fragments)):
        for p in paths:
            if not p.is_file():
                raise BuildError(f"{kind} {p}: no such file")
    return patches, fragments


def builds_dir() -> Path:
    return cache_dir() / "builds"


def build(source: Source, *, patches=(), fragments=(), jobs: int | None = None) -> Path:
    """The output directory of a build with these inputs; built when not cached."""
    patches, fragments = _check_inputs(patches, fragments)
    out = builds_dir() / f"{source.name}-{build_key(source, patches, fragments)}"
    if (out / "bzImage").is_file():
        log.info("build-kernel: cached: %s", out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _cache_lock():
        if (out / "bzImage").is_file():
            return out
        work = cache_dir() / "work" / source.name
        shutil.rmtree(work, ignore_errors=True)
        log_path = out.parent / f"{out.name}.log"
        try:
            t0 = time.monotonic()
            _prepare(work, source, patches)
            _configure(work, fragments)
            _make(work, jobs or os.cpu_count() or 1, log_path, t0)
            _collect(work, out, log_path)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # the objects live on in ccache
    log.info("build-kernel: built: %s", out)
    return out


class _cache_lock:
    """One build at a time per cache (builds and variant trees alike)."""

    def __enter__(self):
        builds_dir().mkdir(parents=True, exist_ok=True)
        self._file = open(builds_dir() / ".lock", "w")
        fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self._file.close()


def _env() -> dict:
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


def _prepare(work: Path, source: Source, patches: list[Path]):
    log.info("build-kernel: preparing %s in %s", source.identity, work)
    source.prepare(work)
    for patch in patches:
        apply_patch(work, patch, source.identity)
        log.info("build-kernel: applied %s", patch.name)


def apply_patch(work: Path, patch: Path, what: str):
    result = cmd(["patch", "-p1", "--forward", "--batch", "-d", work, "-i", patch], check=False)
    if result.returncode != 0:
        raise BuildError(f"--patch {patch}: does not apply to {what}:\n"
                         f"{(result.stdout + result.stderr)[-3000:]}")


def _configure(work: Path, fragments: list[Path]):
    env, make = _env(), _make_argv(work)
    cmd([*make, "defconfig"], env=env, timeout=600)
    cmd([*make, "kvm_guest.config"], env=env, timeout=600)
    cmd([work / "scripts/kconfig/merge_config.sh", "-m", "-O", work, work / ".config", *fragments],
        env=env, cwd=work, timeout=600)
    cmd([*make, "olddefconfig"], env=env, timeout=600)
    missing = missing_options(requested_options(fragments), (work / ".config").read_text())
    if missing:
        raise BuildError("build-kernel: these requested options did not survive olddefconfig "
                         "(a dependency is off, or the option does not exist in this kernel):\n  "
                         + "\n  ".join(missing))


def _make(work: Path, jobs: int, log_path: Path, t0: float):
    make = _make_argv(work, jobs)
    log.info("build-kernel: config ready (%.0fs); compiling with -j%d%s; log: %s", time.monotonic() - t0,
             jobs, " and ccache" if "CC=ccache gcc" in make else "", log_path)
    with open(log_path, "w") as out:
        proc = subprocess.Popen([*make, "bzImage"], env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        last, shown, units = "", time.monotonic(), 0
        for line in proc.stdout:
            out.write(line)
            if line.startswith("  CC "):
                units += 1
                last = line.strip()
            if time.monotonic() - shown > 15:
                shown = time.monotonic()
                log.info("build-kernel: [%4.0fs] %d files compiled; %s", shown - t0, units, last)
        rc = proc.wait()
    if rc != 0:
        text = log_path.read_text(errors="replace").splitlines()
        errors = [i for i, line in enumerate(text) if "error:" in line or "Error " in line]
        first = errors[0] if errors else max(0, len(text) - 30)
        raise BuildError("build-kernel: make failed:\n" + "\n".join(text[max(0, first - 5):first + 25])
                         + f"\nfull log: {log_path}")
    log.info("build-kernel: compiled in %.0fs", time.monotonic() - t0)


def _collect(work: Path, out: Path, log_path: Path):
    """Copy the artifacts into ``out`` atomically (a half-written output is
    never taken for a build)."""
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for src, dst in ARTIFACTS.items():
        shutil.copy2(work / src, tmp / dst)
    shutil.copy2(log_path, tmp / "build.log")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log_path.unlink()


class VariantTree:
    """One prepared tree (source + base patches + the reference patch +
    config, built once) on which variants of the reference patch (mutants,
    a patch without its fix) are built in turn, incrementally: a variant
    rewrites only the files whose text differs, so make recompiles those
    and relinks.  Outputs land in the build cache under the same key a
    plain build of (source, base patches + variant) would have.

        with VariantTree(source, base, reference, fragments) as tree:
            tree.reference            # output dir of the unmutated build
            out = tree.build(text)    # a variant: the reference patch's text, changed
    """

    def __init__(self, source: Source, base_patches=(), reference: Path | None = None, fragments=(),
                 jobs: int | None = None, out_dir: Path | None = None):
        self.source = source
        self.base, self.fragments = _check_inputs(base_patches, fragments)
        self.reference_patch = Path(reference).resolve() if reference else None
        self.jobs = jobs or os.cpu_count() or 1
        self.out_dir = out_dir or builds_dir()
        self.work = cache_dir() / "work" / f"{source.name}-variants-{os.getpid()}"
        self.pristine = self.work.parent / f"{self.work.name}.pristine"
        self.reference: Path | None = None
        self._lock = _cache_lock()

    def __enter__(self):
        self._lock.__enter__()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.pristine, ignore_errors=True)
        self._lock.__exit__()

    def _setup(self):
        t0 = time.monotonic()
        shutil.rmtree(self.work, ignore_errors=True)
        _prepare(self.work, self.source, self.base)
        # the files a variant may touch, as the base patches leave them
        self.touched = touched_files(self.reference_patch.read_text()) if self.reference_patch else []
        for rel in self.touched:
            dst = self.pristine / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if (self.work / rel).exists():
                shutil.copy2(self.work / rel, dst)
        if self.reference_patch:
            apply_patch(self.work, self.reference_patch, self.source.identity)
        _configure(self.work, self.fragments)
        out = self._out(self.reference_patch.read_text() if self.reference_patch else "")
        log_path = out.parent / f"{out.name}.log"
        _make(self.work, self.jobs, log_path, t0)
        if not (out / "bzImage").is_file():
            _collect(self.work, out, log_path)
        else:
            log_path.unlink(missing_ok=True)
        self.reference = out

    def _out(self, patch_text: str) -> Path:
        digest = hashlib.sha256(json.dumps({
            "builder": BUILDER_VERSION, "source": self.source.identity,
            "patches": [hashlib.sha256(p.read_bytes()).hexdigest() for p in self.base]
            + ([hashlib.sha256(patch_text.encode()).hexdigest()] if patch_text else []),
            "fragments": [hashlib.sha256(f.read_bytes()).hexdigest() for f in self.fragments],
        }).encode()).hexdigest()[:16]
        return self.out_dir / f"{self.source.name}-{digest}"

    def build(self, patch_text: str) -> Path:
        """The output directory of source + base patches + ``patch_text``
        (a variant of the reference patch: it may touch only its files)."""
        out = self._out(patch_text)
        if (out / "bzImage").is_file():
            return out
        t0 = time.monotonic()
        extra = set(touched_files(patch_text)) - set(self.touched)
        if extra:
            raise BuildError(f"a variant touches files the reference patch does not: {sorted(extra)}")
        wanted = self._apply_to_pristine(patch_text)
        changed = 0
        for rel in self.touched:
            current = (self.work / rel).read_bytes() if (self.work / rel).exists() else None
            if wanted.get(rel) != current:
                (self.work / rel).write_bytes(wanted[rel])
                changed += 1
        log.info("build-kernel: variant %s: %d file(s) changed", out.name, changed)
        log_path = out.parent / f"{out.name}.log"
        _make(self.work, self.jobs, log_path, t0)
        _collect(self.work, out, log_path)
        return out

    def _apply_to_pristine(self, patch_text: str) -> dict[str, bytes]:
        scratch = Path(tempfile.mkdtemp(dir=self.work.parent, prefix=".variant-"))
        try:
            for rel in self.touched:
                if (self.pristine / rel).exists():
                    (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(self.pristine / rel, scratch / rel)
            patch_file = scratch / ".variant.patch"
            patch_file.write_text(patch_text)
            apply_patch(scratch, patch_file, "the reference tree")
            return {rel: (scratch / rel).read_bytes() for rel in self.touched if (scratch / rel).exists()}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def touched_files(patch_text: str) -> list[str]:
    """Paths (relative to the tree) a unified diff changes."""
    out = []
    for line in patch_text.splitlines():
        if line.startswith("+++ ") and not line.startswith("+++ /dev/null"):
            path = line[4:].split("\t")[0].strip()
            out.append(path.split("/", 1)[1] if "/" in path else path)
    return list(dict.fromkeys(out))
