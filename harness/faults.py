"""Fault injection on the harness itself: a command killed (SIGTERM or
SIGKILL) at a seeded random moment, then the next command run; the host
must be left clean and the next command must work.

    point = inject(Scenario(...), at_s=3.2, sig=signal.SIGKILL)
    point.leaks, point.wedged, point.recovery_s

What counts as left behind (``leftovers()``): libvirt domains, QEMU
processes, ``nh`` links and namespaces, run directories, lab registries,
temporary files and directories of the harness's processes, held build
locks -- of any process but the caller that is gone (a live one's are in
use: another pytest worker's, another run's, beside this one).  tests/faults and
tools/bench-faults are built on it.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from .util import RUN_ROOT, REPO, TEMP_PREFIX, pid_alive
from .vm.budget import share_owners

HARNESS = [sys.executable, "-m", "harness.cli"]
MARKER = "HARNESS_FAULT_POINT"  # in the environment of every process a fault point's command starts
EXIT_LIMIT_S = 90      # a SIGTERMed command must be gone within this (or it is wedged)


@dataclasses.dataclass
class Scenario:
    name: str
    argv: list[str]                 # the command that gets killed
    next_argv: list[str]            # what must succeed after it
    span_s: float                   # kill times are drawn from [0, span_s)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    next_ok: tuple[int, ...] = (0,)  # exit codes of the next command that count as success
    fresh: object = None            # called before each point (a fresh cache, a new patch...)


@dataclasses.dataclass
class FaultPoint:
    scenario: str
    at_s: float
    signal: str
    exited_s: float | None          # from the signal to the exit; None: it had to be SIGKILLed (wedged)
    leaks_after_term: list[str]     # what a SIGTERMed command left itself (must be nothing)
    next_rc: int | None
    leaks: list[str]                # what was left once the next command had run
    recovery_s: float               # from the signal until the next command succeeded
    detail: str = ""

    @property
    def wedged(self) -> bool:
        return self.exited_s is None or self.next_rc is None

    @property
    def ok(self) -> bool:
        return not self.wedged and not self.leaks and not self.leaks_after_term and self.next_rc == 0


def inject(scenario: Scenario, at_s: float, sig: int, *, next_limit_s: float = 900) -> FaultPoint:
    """Run ``scenario.argv``, send ``sig`` after ``at_s`` seconds (or when
    it ends first), then run ``scenario.next_argv`` and look for leftovers."""
    if callable(scenario.fresh):
        scenario.fresh()
    before = set(leftovers())  # what was there already is not this point's
    env = {**os.environ, **scenario.env}
    marker = f"{os.getpid()}-{time.monotonic_ns()}"  # inherited by everything the command starts
    errors = tempfile.TemporaryFile()  # a file, not a pipe: an orphan holding it open blocks nothing
    child = subprocess.Popen(scenario.argv, cwd=REPO, env={**env, MARKER: marker}, stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True)
    try:
        child.wait(at_s)
    except subprocess.TimeoutExpired:
        pass
    t_signal = time.monotonic()
    exited_s: float | None = None
    if child.poll() is None:
        os.kill(child.pid, sig)
        try:
            child.wait(EXIT_LIMIT_S)
            exited_s = time.monotonic() - t_signal
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    else:
        exited_s = 0.0
    errors.seek(0)
    stderr = errors.read().decode(errors="replace")
    errors.close()
    term_leaks = []
    if sig == signal.SIGTERM and exited_s is not None:
        # a command that had time to stop must have stopped everything it started
        term_leaks = sorted(set(leftovers()) - before) + _descendants(marker)
    next_rc, detail = _run_next(scenario, env, next_limit_s)
    leaks = sorted(set(leftovers()) - before) + _descendants(marker)
    return FaultPoint(scenario.name, round(at_s, 2), signal.Signals(sig).name, exited_s, term_leaks, next_rc, leaks,
                      time.monotonic() - t_signal, detail or stderr[-400:])


def _run_next(scenario: Scenario, env: dict, limit_s: float) -> tuple[int | None, str]:
    try:
        proc = subprocess.run(scenario.next_argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return None, f"the next command ran past {limit_s:.0f}s"
    rc = 0 if proc.returncode in scenario.next_ok else proc.returncode
    return rc, "" if rc == 0 else (proc.stdout + proc.stderr)[-1500:]


def calibrate(argv: list[str], env: dict[str, str] | None = None, until: str | None = None,
              limit_s: float = 900, ok: tuple[int, ...] = (0,)) -> float:
    """Seconds ``argv`` runs unkilled (or until a line with ``until`` on its
    stdout or stderr): the window fault points are drawn from."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **(env or {})}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if until and until in line:
                return time.monotonic() - t0
            if time.monotonic() - t0 > limit_s:
                break
        proc.wait(limit_s)
        if proc.returncode not in ok and not until:
            raise RuntimeError(f"calibration run of {' '.join(argv)} failed (rc {proc.returncode})")
        return time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(EXIT_LIMIT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# -- what a run may leave behind -----------------------------------------------------

_OWNED = re.compile(r"harness-(\d+)-")


def leftovers(me: int | None = None) -> list[str]:
    """Everything a harness process other than ``me`` (default: this one)
    left on the host when it ended (a temporary ``harness-*`` entry that
    names no process counts too).  What a live process owns is in use:
    under ``pytest -n`` another worker's guests and labs come and go."""
    me = os.getpid() if me is None else me

    def left(owner: int | None) -> bool:
        return owner is None or (owner != me and not pid_alive(owner))

    found: list[str] = []
    found += [f"domain {d}" for d in _domains() if left(_owner(d))]
    found += [f"process {p}" for p in _qemu_processes() if left(_owner(p))]
    found += _links_and_namespaces(left)
    if RUN_ROOT.is_dir():
        found += [f"run directory {d}" for d in RUN_ROOT.iterdir()
                  if _owner(d.name) is not None and left(_owner(d.name))]
        labs = RUN_ROOT / "labs"
        if labs.is_dir():
            found += [f"lab registry {r}" for r in labs.iterdir() if left(_registry_owner(r))]
        found += [f"host budget share {path}" for path, owner in share_owners().items() if left(owner)]
    tmp = Path(tempfile.gettempdir())
    found += [f"temporary {p}" for p in tmp.glob(f"{TEMP_PREFIX}*") if left(_temp_owner(p.name))]
    return found


def _descendants(marker: str) -> list[str]:
    """Processes still running that the killed command started (they
    carry its marker in their environment)."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                found.append(f"process {proc.name} ({(proc / 'comm').read_text().strip()}) of the killed command")
        except OSError:
            continue
    return found


def held_locks(cache: Path) -> list[str]:
    """Build locks under ``cache`` that some process still holds."""
    held = []
    for lock in list(cache.glob("trees/*/.lock")) + list(cache.glob("tree-builds/*.lock")):
        with open(lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                held.append(f"lock {lock}")
    return held


def stray_temp_files(cache: Path) -> list[str]:
    return [f"temporary {p}" for p in cache.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".apply-")]


def _owner(name: str) -> int | None:
    m = _OWNED.search(name)
    return int(m.group(1)) if m else None


def _temp_owner(name: str) -> int | None:
    m = re.fullmatch(rf"{TEMP_PREFIX}[a-z-]*?(\d+)-.+", name)
    return int(m.group(1)) if m else None


def _domains() -> list[str]:
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True, text=True,
                         timeout=30).stdout
    return [line for line in out.split() if line.startswith("harness-")]


def _qemu_processes() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and "guest=harness-" in cmdline:
            named = re.search(r"guest=(harness-\S+?)[, ]", cmdline + " ")
            assert named is not None  # "guest=harness-" is there, and a space ends the line
            found.append(named.group(1))
    return found


def _links_and_namespaces(left: Callable[[int | None], bool]) -> list[str]:
    from .lab.hostnet import _OURS, _netns_tag, parse_tag
    from pyroute2 import IPRoute, netns
    found = []
    with IPRoute() as ipr:
        for link in ipr.link("dump"):
            name = link.get_attr("IFLA_IFNAME") or ""
            tag = parse_tag(link.get_attr("IFLA_IFALIAS"))
            if _OURS.match(name) and left(None if tag is None else tag[1]):
                found.append(f"link {name}")
    for name in netns.listnetns():
        tag = parse_tag(_netns_tag(name)) if _OURS.match(name) else None
        if _OURS.match(name) and left(None if tag is None else tag[1]):
            found.append(f"namespace {name}")
    return found


def _registry_owner(path: Path) -> int | None:
    import json
    try:
        return int(json.loads(path.read_text())["owner"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- a kernel tree that builds in seconds ----------------------------------------------

FAKE_MAKEFILE = textwrap.dedent('''\
    # A kernel tree for fault injection: its "build" takes a few seconds of
    # work that a signal can land in, and gives a real (prebuilt) kernel.
    KERNEL ?= {kernel}
    defconfig kvm_guest.config allnoconfig:
    \t@cp $(KERNEL)/.config .config
    olddefconfig:
    \t@true
    # two makes at once in one tree (a killed build's make still running) fail
    bzImage: net/core/dev.c
    \t@if [ -e .building ] && kill -0 $$(cat .building) 2>/dev/null; then \\
    \t  echo "another make ($$(cat .building)) is building in this tree" >&2; exit 1; fi; \\
    \techo $$$$ > .building; i=0; while [ $$i -lt {steps} ]; do sleep 0.1; i=$$((i+1)); done; \\
    \tmkdir -p arch/x86/boot && cp $(KERNEL)/bzImage arch/x86/boot/bzImage; \\
    \tcp $(KERNEL)/vmlinux vmlinux && cp $(KERNEL)/System.map System.map; rm -f .building
    mrproper:
    \t@true
    ''')
FAKE_SOURCE = "int fault_point(void)\n{\n\treturn 0;\n}\n"


def fake_tree(where: Path, kernel_dir: Path, make_s: float = 3.0) -> Path:
    """A tree ``--tree`` takes whose build runs ``make_s`` seconds and
    yields a copy of the built kernel in ``kernel_dir`` (a build-kernel
    output: bzImage, vmlinux, System.map, .config)."""
    shutil.rmtree(where, ignore_errors=True)
    (where / "net" / "core").mkdir(parents=True)
    (where / "scripts" / "kconfig").mkdir(parents=True)
    (where / "Makefile").write_text(FAKE_MAKEFILE.format(kernel=kernel_dir, steps=max(1, int(make_s * 10))))
    merge = where / "scripts" / "kconfig" / "merge_config.sh"
    # every fragment appended: each requested option "survives olddefconfig"
    merge.write_text('#!/bin/sh\nshift 4; cat "$@" >> .config\n')
    merge.chmod(0o755)
    (where / "net" / "core" / "dev.c").write_text(FAKE_SOURCE)
    return where


def fake_patch(n: int) -> str:
    """A patch of the fake tree, different for each ``n`` (so each build is one)."""
    return (f"--- a/net/core/dev.c\n+++ b/net/core/dev.c\n@@ -1,4 +1,5 @@\n int fault_point(void)\n {{\n"
            f"+\tif (fault_point_{n}())\n+\t\treturn 1;\n \treturn 0;\n }}\n").replace("@@ -1,4 +1,5 @@",
                                                                                 "@@ -1,4 +1,6 @@")


# -- the scenarios tests/faults and tools/bench-faults inject into ----------------------

def scenarios(work: Path, minimal: Path) -> dict[str, Scenario]:
    """``harness run``, ``harness up``, a kernel build and a mutant run,
    each with the window its fault points are drawn from (measured now).
    ``work`` holds the fake tree and a private cache for the builds;
    ``minimal`` is the built minimal kernel the fake tree "builds"."""
    tree = fake_tree(work / "tree", minimal)
    build_cache = work / "cache"
    patch = work / "fault.patch"
    counter = iter(range(1, 1 << 30))

    def fresh_build() -> None:  # an empty cache: the point may land in preparing, configuring, making, collecting
        shutil.rmtree(build_cache, ignore_errors=True)
        patch.write_text(fake_patch(next(counter)))

    def fresh_patch() -> None:  # the prepared tree stays; the patch is new (a build, then the selection)
        patch.write_text(fake_patch(next(counter)))

    fresh_build()
    build_env = {"HARNESS_CACHE": str(build_cache)}
    build = [*HARNESS, "build-kernel", "--tree", str(tree), "--patch", str(patch)]
    run = [*HARNESS, "run", "--accel", "tcg", "--", "sh", "-c", "sleep 20"]
    up = [*HARNESS, "up", "--accel", "tcg", str(REPO / "topologies" / "single-mq.yaml")]
    check = [*HARNESS, "run", "--accel", "tcg", "--", "true"]
    mutant_id = subprocess.run([*HARNESS, "mutants", "--patch", str(patch), "--list"], cwd=REPO,
                               capture_output=True, text=True, env={**os.environ, **build_env}).stdout.split()[0]
    mutants = [*HARNESS, "mutants", "--tree", str(tree), "--patch", str(patch), "--mutant", mutant_id,
               "-k", "test_exit_codes_are_exact", "--accel", "tcg", "--deadline", "600", "--out", str(work / "out")]
    return {
        "run": Scenario("run", run, check, calibrate(check)),
        "up": Scenario("up", up, check, calibrate(up, until="up in") + 2),
        "build": Scenario("build", build, build, calibrate(build, build_env) + 1, build_env, fresh=fresh_build),
        # the mutant's fate (killed, survived) is not the point: its run ends (rc 0 or 1) and leaves nothing
        "mutants": Scenario("mutants", mutants, mutants, _fresh_then(fresh_patch, calibrate, mutants, build_env,
                                                                     ok=(0, 1)),
                            build_env, next_ok=(0, 1), fresh=fresh_patch),
    }


def _fresh_then(fresh, fn, *args, **kw):
    fresh()
    return fn(*args, **kw)
