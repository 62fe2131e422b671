"""`harness run -- CMD` and `harness shell`: boot a kernel, run one thing,
look, tear down (what `vng --run KERNEL -- CMD` does).

    rc = run_once(GuestSpec(kernel), ["uname", "-r"])     # streams the output, CMD's exit code
    shell(GuestSpec(kernel))                              # an interactive shell; Ctrl-D ends it

The command runs in the host's current directory (the guest sees the
host's root read-only, so that directory is there).  A splat printed while
it runs is shown after it and makes the exit status non-zero.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shlex
import shutil
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

from .env import prepare
from .lab.lab import Lab
from .util import GUEST_MEMORY_MB, GUEST_VCPUS, REPO, HarnessError, temp_dir
from .vm.guest import Guest
from .kernel.kernel import Kernel

log = logging.getLogger(__name__)


@dataclasses.dataclass
class GuestSpec:
    kernel: Kernel
    vcpus: int = GUEST_VCPUS
    memory_mb: int = GUEST_MEMORY_MB
    cmdline: str = ""
    accel: str = "auto"
    topology: str | None = None     # a lab instead of a bare guest: the command runs in its first guest


@contextlib.contextmanager
def booted(spec: GuestSpec) -> Iterator[Guest]:
    """The guest (or the topology's first guest) for one command; its
    console log is kept under logs/ only when the kernel splatted."""
    accel = prepare(spec.kernel, spec.accel)
    logs = temp_dir("run")
    keep = False
    try:
        if spec.topology:
            path = Path(spec.topology)
            if not path.suffix:
                path = REPO / "topologies" / f"{spec.topology}.yaml"
            lab = Lab.from_yaml(path, kernel=spec.kernel, accel=accel, log_dir=logs)
            with lab:
                guest = next(iter(lab.guests.values()))
                yield guest
                keep = bool(guest.splats())
        else:
            guest = Guest("run", spec.kernel, vcpus=spec.vcpus, memory_mb=spec.memory_mb, cmdline=spec.cmdline,
                          accel=accel, log_dir=logs)
            with guest:
                yield guest
                keep = bool(guest.splats())
    finally:
        if keep:
            kept = REPO / "logs" / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(logs), kept)
            print(f"harness: console log kept in {kept}", file=sys.stderr)
        else:
            shutil.rmtree(logs, ignore_errors=True)


def _stream(kind: str, data: bytes):
    out = sys.stdout.buffer if kind == "O" else sys.stderr.buffer
    out.write(data)
    out.flush()


def run_once(spec: GuestSpec, argv: list[str]) -> int:
    """Boot, run ``argv`` in the current directory with its output streamed,
    tear down; the command's exit code, or 1 when it succeeded but the
    kernel splatted meanwhile."""
    command = " ".join(shlex.quote(a) for a in argv) if len(argv) > 1 else argv[0]
    with booted(spec) as guest:
        agent = guest.agent
        assert agent is not None  # booted() returns a guest whose agent answered
        agent.splat_grace_s = float("inf")  # the user's command runs to its end
        start = len(guest.console)
        job = guest.spawn(f"cd {shlex.quote(os.getcwd())} 2>/dev/null; {command}", on_output=_stream)
        try:
            result = job.wait(timeout=None)
        except KeyboardInterrupt:
            job.kill()
            return 130
        guest.mark()
        splats = guest.splats(start)
        for s in splats:
            print(f"harness: kernel {s.kind} while the command ran:\n{s.text}", file=sys.stderr)
        return result.rc or (1 if splats else 0)


def shell(spec: GuestSpec) -> int:
    """An interactive shell in a fresh guest; Ctrl-D (or exit) tears it down."""
    with booted(spec) as guest:
        agent = guest.agent
        assert agent is not None  # booted() returns a guest whose agent answered
        agent.splat_grace_s = float("inf")
        interactive = sys.stdin.isatty()
        size = shutil.get_terminal_size()
        job = guest.spawn_tty(rows=size.lines, cols=size.columns, term=os.environ.get("TERM", "xterm"),
                              on_output=_stream)
        saved = termios.tcgetattr(sys.stdin) if interactive else None

        def keys() -> None:
            while job.running:
                data = os.read(sys.stdin.fileno(), 1024)
                agent.send_input(job, data or b"\x04")  # end of input: Ctrl-D
                if not data:
                    return

        def resized(*_: object) -> None:
            size = shutil.get_terminal_size()
            agent.resize(job, size.lines, size.columns)

        old_winch = signal.signal(signal.SIGWINCH, resized) if interactive else None
        try:
            if interactive:
                tty.setraw(sys.stdin.fileno())
            threading.Thread(target=keys, daemon=True, name="shell-keys").start()
            result = job.wait(timeout=None)
        finally:
            if saved is not None:
                termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
            if old_winch is not None:
                signal.signal(signal.SIGWINCH, old_winch)
        return result.rc


def resolve_kernel(path: str | None, build: bool) -> Kernel:
    """--kernel (default: Debian's 6.12); with --build, a tree is built
    first when it changed since its last build."""
    if path is None:
        if build:
            raise HarnessError("--build needs --kernel DIR, a kernel tree")
        return Kernel.default()
    if build:
        from .kernel.build import build_tree
        return Kernel.from_path(build_tree(Path(path)))
    return Kernel.from_path(path)
