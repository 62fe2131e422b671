"""A guest's two channels, host side.

``ConsoleLog``: the kernel console (serial 0).  Every byte goes to a log file;
lines are scanned for splats as they arrive.

``AgentChannel``: the command channel (virtio-serial port, guest agent in
images/guest/agent.c).  Exact exit codes and bytes, several jobs at once.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

from ..endpoint import Result, _tail
from .splat import Splat, SplatScanner
from ..util import HarnessError

HEADER = struct.Struct("<IIB3x")


class GuestError(HarnessError):
    pass


class GuestCrashed(GuestError):
    """The guest died (panic, QEMU gone) while something waited on it."""


class CommandTimeout(GuestError):
    pass


class SplatDuringCommand(GuestError):
    """The kernel printed a splat while a command ran, and the command then
    stalled: it is killed instead of waiting for its whole timeout."""

    def __init__(self, message: str, splat: Splat):
        self.splat = splat
        super().__init__(message)


def connect_unix(path: Path, timeout: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if time.monotonic() > deadline:
                raise GuestError(f"cannot connect to {path}")
            time.sleep(0.01)


def _close_reader(sock: socket.socket, reader: threading.Thread):
    """Shut a channel's socket so its reader thread sees EOF, then close it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    reader.join(timeout=5)
    sock.close()


class ConsoleLog:
    """Reads serial 0 in a thread: log file, splat scanner, line waiters."""

    def __init__(self, sock: socket.socket, log_path: Path, on_panic=None):
        self.log_path = log_path
        self.lines: list[str] = []
        self.scanner = SplatScanner()
        self.closed = False
        self._sock = sock
        self._on_panic = on_panic
        self._panic: Splat | None = None
        self._panic_reported = False
        self.splat_seen: dict[int, float] = {}  # id(splat) -> when its first line arrived
        self._cond = threading.Condition()
        self._log = open(log_path, "ab", buffering=0)
        self._thread = threading.Thread(target=self._read, name=f"console:{log_path.name}",
                                        daemon=True)
        self._thread.start()

    def _read(self):
        pending = b""
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            self._log.write(data)
            pending += data
            *complete, pending = pending.split(b"\n")
            if complete:
                self._add([c.rstrip(b"\r").decode(errors="replace") for c in complete])
        if pending:
            self._add([pending.decode(errors="replace")])
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._log.close()
        self._report_panic()

    def _add(self, new_lines):
        panic_ended = False
        with self._cond:
            for line in new_lines:
                self.lines.append(line)
                splat = self.scanner.feed(line)
                if splat is not None:
                    self.splat_seen[id(splat)] = time.monotonic()
                if splat is not None and splat.kind == "panic" and self._panic is None:
                    self._panic = splat
                    # Report at its end marker; a panic that never ends, soon anyway.
                    threading.Timer(3.0, self._report_panic).start()
                if self._panic is not None and "---[ end Kernel panic" in line:
                    panic_ended = True
            self._cond.notify_all()
        if panic_ended:
            self._report_panic()

    def _report_panic(self):
        with self._cond:
            if self._panic is None or self._panic_reported:
                return
            self._panic_reported = True
        if self._on_panic:
            self._on_panic(self._panic)

    def wait_for_line(self, needle: str, start: int = 0, timeout: float = 10.0) -> int:
        """Index of the first line at or after ``start`` containing ``needle``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.lines)):
                    if needle in self.lines[i]:
                        return i
                start = max(start, len(self.lines))
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise GuestError(f"console: no line with {needle!r} within {timeout}s")
                self._cond.wait(left)

    def splat_since(self, start: int, older_than: float, ignore=()) -> Splat | None:
        """The first splat at or after line ``start`` that appeared at least
        ``older_than`` seconds ago, of a kind not in ``ignore``."""
        now = time.monotonic()
        with self._cond:
            for s in self.scanner.splats:
                if s.line_no >= start and s.kind not in ignore and \
                        now - self.splat_seen.get(id(s), now) >= older_than:
                    return s
        return None

    def splats_between(self, start: int, end: int | None = None) -> list[Splat]:
        with self._cond:
            return [s for s in self.scanner.splats
                    if s.line_no >= start and (end is None or s.line_no < end)]

    def tail(self, n: int = 40) -> str:
        with self._cond:
            return "\n".join(self.lines[-n:])

    def text(self, start: int = 0, end: int | None = None) -> str:
        with self._cond:
            return "\n".join(self.lines[start:end])

    def __len__(self):
        return len(self.lines)

    def close(self):
        _close_reader(self._sock, self._thread)


class Job:
    """One command running in the guest."""

    def __init__(self, channel: "AgentChannel", job_id: int, command: str, console_line: int = 0):
        self.channel = channel
        self.id = job_id
        self.command = command
        self.console_line = console_line  # where the console was when it started
        self.on_output = None             # on_output(kind, data) as output arrives
        self.keep_output = True           # False: a stream's bytes go to on_output only
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.rc: int | None = None
        self.error: str | None = None
        self.done = threading.Event()

    def wait(self, timeout: float | None = 60.0) -> Result:
        """Result of the job; raises on timeout (after killing it), on a crash,
        or when a splat printed since it started is followed by a stall."""
        if timeout is not None:
            timeout *= self.channel.time_scale
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done.wait(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))):
            splat = self.channel.stalling_splat(self.console_line)
            if splat is not None:
                self.kill()
                self.done.wait(2.0)
                raise SplatDuringCommand(
                    f"{self.channel.name}: kernel {splat.kind} while running: {self.command}\n"
                    f"(the command was still running {self.channel.splat_grace_s:.0f}s later: killed)\n"
                    f"--- splat ---\n{splat.text}", splat)
            if deadline is not None and time.monotonic() >= deadline:
                self.kill()
                self.done.wait(2.0)
                raise CommandTimeout(
                    f"{self.channel.name}: command timed out after {timeout}s: {self.command}\n"
                    f"--- stdout (tail) ---\n{_tail(self.stdout.decode(errors='replace'))}\n"
                    f"--- stderr (tail) ---\n{_tail(self.stderr.decode(errors='replace'))}\n"
                    f"--- console (tail) ---\n{self.channel.console_tail()}")
        if self.error is not None:
            raise GuestCrashed(f"{self.channel.name}: {self.error} while running: {self.command}\n"
                               f"--- console (tail) ---\n{self.channel.console_tail()}")
        return Result(self.rc if self.rc is not None else -1, bytes(self.stdout), bytes(self.stderr))

    def kill(self):
        self.channel.send(self.id, b"K", b"")

    @property
    def running(self) -> bool:
        return not self.done.is_set()


class AgentChannel:
    """Frames over the agent's unix socket; a reader thread demultiplexes jobs."""

    def __init__(self, sock: socket.socket, name: str, console: "ConsoleLog | None" = None):
        self.name = name
        self.console = console
        self.splat_grace_s = 5.0     # a command may go on this long after a splat
        self.time_scale = 1.0        # every timeout is multiplied by it (a slow debug kernel)
        self.allowed_splats: set[str] = set()  # kinds the running test provokes on purpose
        # where the running test began on the console: a splat after it makes
        # any command of the test that then stalls fail (a wedged kernel
        # would otherwise cost every later command its whole timeout)
        self.watch_from: int | None = None
        self.release: str | None = None
        self._sock = sock
        self._send_lock = threading.Lock()
        self._jobs: dict[int, Job] = {}
        self._jobs_lock = threading.Lock()
        self._next_id = 1
        self._hello = threading.Event()
        self._dead: str | None = None
        self._thread = threading.Thread(target=self._read, name=f"agent:{name}", daemon=True)
        self._thread.start()

    def console_tail(self, n: int = 40) -> str:
        return self.console.tail(n) if self.console is not None else ""

    def stalling_splat(self, start_line: int) -> Splat | None:
        if self.console is None:
            return None
        if self.watch_from is not None:
            start_line = min(start_line, self.watch_from)
        return self.console.splat_since(start_line, self.splat_grace_s, ignore=self.allowed_splats | {"panic"})

    def wait_ready(self, timeout: float) -> str:
        if not self._hello.wait(timeout) or self._dead:
            raise GuestError(f"{self.name}: the guest agent did not come up within {timeout}s"
                             f"{' (' + self._dead + ')' if self._dead else ''}\n"
                             f"--- console (tail) ---\n{self.console_tail()}")
        return self.release or ""

    def send(self, job_id: int, kind: bytes, payload: bytes):
        with self._send_lock:
            try:
                self._sock.sendall(HEADER.pack(job_id, len(payload), kind[0]) + payload)
            except OSError as e:
                self.fail(f"command channel lost ({e})")

    def start(self, command: str, kind: bytes = b"R", on_output=None, payload: bytes | None = None) -> Job:
        """Start a job: ``R`` runs ``command`` with the shell, ``D`` dumps files,
        ``T`` runs it on a pseudo-terminal (see agent.c).  ``on_output(kind,
        data)``, kind "O" or "E", sees the job's output as it arrives."""
        with self._jobs_lock:
            job_id = self._next_id
            self._next_id += 1
            job = Job(self, job_id, command, len(self.console) if self.console is not None else 0)
            if self._dead:
                job.error = self._dead
                job.done.set()
                return job
            job.on_output = on_output
            self._jobs[job_id] = job
        self.send(job_id, kind, payload if payload is not None else command.encode())
        return job

    def start_tty(self, command: str = "", *, rows: int = 24, cols: int = 80, term: str = "xterm",
                  on_output=None) -> Job:
        """``command`` (an interactive shell when empty) on a pseudo-terminal."""
        return self.start(command or "(shell)", b"T", on_output, f"{rows} {cols} {term}\n{command}".encode())

    def start_stream(self, command: str, on_output) -> Job:
        """``command`` with a pipe on its stdin (an ``S`` job): send_input()
        feeds it, close_input() ends it; its output goes to ``on_output``
        only (a relay or a server runs for as long as its guest)."""
        job = self.start(command, b"S", on_output)
        job.keep_output = False
        return job

    def send_input(self, job: Job, data: bytes):
        """Keystrokes for a ``T`` job, bytes for an ``S`` job's stdin."""
        for at in range(0, len(data), 1 << 16):  # the agent takes frames under 1 MiB
            self.send(job.id, b"I", data[at:at + (1 << 16)])

    def close_input(self, job: Job):
        """End of an ``S`` job's stdin."""
        self.send(job.id, b"I", b"")

    def resize(self, job: Job, rows: int, cols: int):
        self.send(job.id, b"W", f"{rows} {cols}".encode())

    def ping(self, timeout: float = 10.0) -> float:
        """Seconds for one echo through the agent: the channel's own latency,
        without a process being started in the guest."""
        with self._jobs_lock:
            job_id = self._next_id
            self._next_id += 1
            job = self._jobs[job_id] = Job(self, job_id, "(ping)", len(self.console) if self.console else 0)
        t0 = time.monotonic()
        self.send(job_id, b"P", b"")
        job.wait(timeout)
        return time.monotonic() - t0

    def fail(self, reason: str):
        """The guest is gone: every waiting job ends with ``reason``."""
        with self._jobs_lock:
            if self._dead is None:
                self._dead = reason
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.error = reason
            job.done.set()
        self._hello.set()

    @property
    def dead(self) -> str | None:
        return self._dead

    def _recv_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self._sock.recv(min(n - len(buf), 1 << 20))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _read(self):
        while True:
            head = self._recv_exact(HEADER.size)
            if head is None:
                break
            job_id, length, kind = HEADER.unpack(head)
            payload = self._recv_exact(length) if length else b""
            if payload is None:
                break
            kind = chr(kind)
            if kind == "H":
                self.release = payload.decode()
                self._hello.set()
                continue
            with self._jobs_lock:
                job = self._jobs.get(job_id)
                if job is not None and kind in "XFP":  # P: a ping's echo
                    del self._jobs[job_id]
            if job is None:
                continue
            if kind in "OE" and job.on_output is not None:
                job.on_output(kind, payload)
            if kind == "O" and job.keep_output:
                job.stdout += payload
            elif kind == "E" and job.keep_output:
                job.stderr += payload
            elif kind == "X":
                job.rc = int(payload)
                job.done.set()
            elif kind == "P":
                job.rc = 0
                job.done.set()
            elif kind == "F":
                job.rc = 127
                job.stderr += payload
                job.done.set()
        self.fail("the guest is gone (command channel closed)")

    def close(self):
        _close_reader(self._sock, self._thread)
