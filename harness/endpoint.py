"""One way to run a command anywhere.

A guest, a container inside a guest, a host namespace (and the host
itself, through ``util.cmd``) run commands the same way and report them
the same way, as ksft's ``cmd(..., host=)`` does:

    r = where.run("ip -j link")          # Result(rc, stdout, stderr), never raises on rc
    where.check("sysctl -qw ...")         # raises CommandFailed, naming where and what
    job = where.spawn("iperf3 -s -1")     # Job: wait(timeout) -> Result, kill(), running
    where.dump([...])                     # a Job reading files without starting a program

Endpoint is the base: a subclass gives ``name``, ``spawn()`` and ``dump()``.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from .util import HarnessError, teardown_section


@dataclasses.dataclass
class Result:
    rc: int
    stdout_bytes: bytes
    stderr_bytes: bytes

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode(errors="replace")

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def returncode(self) -> int:
        return self.rc


def _tail(text: str, n: int = 3000) -> str:
    return text if len(text) <= n else "[...]" + text[-n:]


class CommandFailed(HarnessError):
    """A command exited non-zero where it had to succeed."""

    def __init__(self, where: str, command, result: Result):
        self.where, self.command, self.result = where, command, result
        shown = " ".join(map(str, command)) if isinstance(command, (list, tuple)) else command
        super().__init__(f"{where}: command failed (rc={result.rc}): {shown}\n"
                         f"--- stdout ---\n{_tail(result.stdout)}\n--- stderr ---\n{_tail(result.stderr)}")


class Job(Protocol):
    """A command started with spawn()."""

    def wait(self, timeout: float | None = 60.0) -> Result: ...

    def kill(self) -> None: ...

    @property
    def running(self) -> bool: ...


class DoneJob:
    """A job that had finished before it was returned."""

    def __init__(self, result: Result):
        self.result = result

    def wait(self, timeout: float | None = None) -> Result:
        return self.result

    def kill(self) -> None:
        pass

    @property
    def running(self) -> bool:
        return False


class Endpoint:
    """Where commands run.  Subclasses set ``name`` and give spawn() and dump()."""

    name: str = "?"

    def spawn(self, command: str) -> Job:
        raise NotImplementedError

    def dump(self, patterns: list[str]) -> Job:
        raise NotImplementedError

    def run(self, command: str, timeout: float = 60.0) -> Result:
        return self.spawn(command).wait(timeout)

    def check(self, command: str, timeout: float = 60.0) -> Result:
        result = self.run(command, timeout)
        if result.rc != 0:
            raise CommandFailed(self.name, command, result)
        return result


def cmd(argv, check: bool = True, timeout: float = 120, **kw) -> Result:
    """Run a host command (an argv list, never a shell); its Result, or
    CommandFailed naming "host" when it fails and ``check`` is set.  The
    command runs in a process group of its own, and whatever ends the wait
    (its timeout, Ctrl-C, SIGTERM) ends the whole group first: no make or
    compiler outlives the call."""
    argv = list(map(str, argv))
    if kw.pop("capture_output", True):
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
    data = kw.pop("input", None)
    if data is not None:
        kw.setdefault("stdin", subprocess.PIPE)
    with process_group(argv, **kw) as proc:
        out, err = proc.communicate(data, timeout=timeout)
    result = Result(proc.returncode, out or b"", err or b"")
    if check and result.rc != 0:
        raise CommandFailed("host", argv, result)
    return result


# Process groups started here and not yet stopped: a command of a thread
# other than the main one (a guest's boot building the agent) is not
# interrupted by a signal, so the process ends them when it exits.
_live: dict[int, subprocess.Popen] = {}
_live_lock = threading.Lock()
_live_owner = os.getpid()  # a forked copy runs the atexit hook too: the groups are not its


@contextlib.contextmanager
def process_group(argv: Sequence[str | os.PathLike[str]], *, grace: float = 10.0,
                  **kw: Any) -> Iterator[subprocess.Popen]:
    """``Popen(argv)`` in a session of its own, for the ``with`` block:
    whatever ends the block early (an exception, Ctrl-C, SIGTERM) ends the
    whole group first (stop_group), and so does this process's exit while
    the block still runs in another thread."""
    proc = None
    try:
        # a SIGTERM landing in the fork would leave a child nobody stops:
        # it is raised once the child is known
        with teardown_section():
            proc = subprocess.Popen(argv, start_new_session=True, **kw)
            with _live_lock:
                _live[proc.pid] = proc
        yield proc
    except BaseException:
        if proc is not None:
            stop_group(proc, grace)
        raise
    finally:
        if proc is not None:
            _forget(proc)


def _forget(proc: subprocess.Popen):
    with _live_lock:
        _live.pop(proc.pid, None)


@atexit.register
def _end_live_groups():
    if os.getpid() != _live_owner:
        return
    with _live_lock:
        procs = list(_live.values())
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        _wait_group_gone(proc.pid)


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End ``proc``'s process group: SIGTERM, then SIGKILL after ``grace``
    seconds; returns once ``proc`` is reaped and its group is gone (a
    compiler's cc1 dies a moment after its gcc)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    # the group is a session of our making: whatever of it is left goes too
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
    _wait_group_gone(proc.pid)
    _forget(proc)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _wait_group_gone(pgid: int, limit_s: float = 2.0):
    """Until no process of group ``pgid`` runs (zombies waiting for their
    reaper do not count), for at most ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and _group_runs(pgid):
        time.sleep(0.01)


def _group_runs(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    for stat in os.scandir("/proc"):
        if not stat.name.isdigit():
            continue
        try:
            with open(f"/proc/{stat.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            return True
    return False
