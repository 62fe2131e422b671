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

import dataclasses
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
    CommandFailed naming "host" when it fails and ``check`` is set."""
    kw.setdefault("capture_output", True)
    proc = subprocess.run(list(map(str, argv)), timeout=timeout, **kw)
    result = Result(proc.returncode, proc.stdout or b"", proc.stderr or b"")
    if check and result.rc != 0:
        raise CommandFailed("host", list(map(str, argv)), result)
    return result
