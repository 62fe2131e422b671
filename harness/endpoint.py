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

import contextlib
import dataclasses
import os
import signal
import subprocess
from typing import Protocol

from .util import HarnessError


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
    proc = subprocess.Popen(argv, start_new_session=True, **kw)
    try:
        out, err = proc.communicate(data, timeout=timeout)
    except BaseException:
        stop_group(proc)
        raise
    result = Result(proc.returncode, out or b"", err or b"")
    if check and result.rc != 0:
        raise CommandFailed("host", argv, result)
    return result


def stop_group(proc: subprocess.Popen, grace: float = 10.0):
    """End ``proc``'s process group: SIGTERM, then SIGKILL after ``grace``
    seconds; returns once ``proc`` is reaped."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(1)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
