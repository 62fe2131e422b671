"""A guest's two channels, host side.

``ConsoleLog``: the kernel console (serial 0).  Every byte goes to a log file;
lines are scanned for splats as they arrive.

``AgentChannel``: the command channel (virtio-serial port, guest agent in
images/guest/agent.c).  Exact exit codes and bytes, several jobs at once.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import socket
import struct
import threading
import time
import typing
from pathlib import Path

from ..endpoint import Result, _tail
from .splat import Splat, SplatScanner
from ..util import HarnessError

HEADER = struct.Struct("<IIB3x")
log = logging.getLogger(__name__)


class GuestError(HarnessError):
    pass


class GuestCrashed(GuestError):
    """The guest died (panic, QEMU gone) while something waited on it."""


class CommandTimeout(GuestError):
    pass


class BadFrame(GuestError):
    """The guest sent bytes that are not the agent's protocol."""


class OutputFlood(GuestError):
    """A command wrote more than the host keeps of one command's output."""


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
                raise GuestError(f"cannot connect to {path}") from None
            time.sleep(0.01)


def _close_reader(sock: socket.socket, reader: threading.Thread):
    """Shut a channel's socket so its reader thread sees EOF, then close it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    reader.join(timeout=5)
    sock.close()


# What a guest may cost the host, whatever its kernel prints (bytes from a
# guest are untrusted): console text kept in memory, console log on disk,
# and one command's output in memory and spilled to disk.
CONSOLE_KEPT = 16 << 20
CONSOLE_LOGGED = 64 << 20
CONSOLE_TAIL = 200          # the last lines, kept even after a flood
LONGEST_LINE = 64 << 10     # a "line" without a newline is cut here
OUTPUT_KEPT = 32 << 20
OUTPUT_SPILLED = 256 << 20
MAX_FRAME = 1 << 20         # the agent sends 64 KiB chunks


def size(n: int) -> str:
    """Bytes as a person writes them: 64 MiB, 256 KiB, 900 bytes."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


@dataclasses.dataclass(frozen=True)
class Flood:
    """Where a guest's output went past what the host keeps, and why."""
    line_no: int
    reason: str


class ConsoleLog:
    """Reads serial 0 in a thread: log file, splat scanner, line waiters.

    Memory and disk are bounded: past CONSOLE_KEPT bytes of text, lines are
    counted and scanned but not kept (only the last CONSOLE_TAIL are), and
    the log file stops at CONSOLE_LOGGED with a marker; ``flood`` says
    where and why."""

    def __init__(self, sock: socket.socket, log_path: Path, on_panic=None):
        self.log_path = log_path
        self.scanner = SplatScanner()
        self.closed = False
        self.flood: Flood | None = None
        self._sock = sock
        self._on_panic = on_panic
        self._panic: Splat | None = None
        self._panic_reported = False
        self.splat_seen: dict[int, float] = {}  # id(splat) -> when its first line arrived
        self._lines: list[str] = []             # lines 0.. while memory lasts
        self._count = 0                         # lines seen
        self._kept_bytes = 0
        self._tail: collections.deque[tuple[int, str]] = collections.deque(maxlen=CONSOLE_TAIL)
        self._watchers: list[list] = []         # [needle, start, found index or None]
        self._marks: dict[int, str] = {}        # index -> line, of the harness's marks
        self._logged = 0
        self._cond = threading.Condition()
        self._log = open(log_path, "ab", buffering=0)
        self._thread = threading.Thread(target=self._read, name=f"console:{log_path.name}",
                                        daemon=True)
        self._thread.start()

    def _read(self):
        pending = b""
        try:
            while True:
                try:
                    data = self._sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                self._write_log(data)
                pending += data
                *complete, pending = pending.split(b"\n")
                while len(pending) > LONGEST_LINE:  # no newline for that long: cut it
                    complete.append(pending[:LONGEST_LINE])
                    pending = pending[LONGEST_LINE:]
                if complete:
                    self._add([c[at:at + LONGEST_LINE].rstrip(b"\r").decode(errors="replace")
                               for c in complete for at in range(0, max(len(c), 1), LONGEST_LINE)])
            if pending:
                self._add([pending.decode(errors="replace")])
        except Exception:  # a bug here must not leave a waiter waiting, nor the guest's serial port full
            log.exception("%s: console reader failed; the rest is read and dropped", self.log_path.name)
            with contextlib.suppress(OSError):
                while self._sock.recv(65536):
                    pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()
            self._log.close()
            self._report_panic()

    def _write_log(self, data: bytes):
        if self._logged >= CONSOLE_LOGGED:
            return
        room = CONSOLE_LOGGED - self._logged
        try:
            self._log.write(data[:room])
            self._logged += len(data)
            if self._logged >= CONSOLE_LOGGED:
                self._log.write(f"\n--- harness: console log cut at {size(CONSOLE_LOGGED)} (a flood); "
                                "later lines are scanned for splats, not written ---\n".encode())
        except OSError as e:  # a full disk: the console is still read (or the guest would stall)
            log.warning("%s: cannot write the console log (%s): no more of it is written", self.log_path, e)
            self._logged = CONSOLE_LOGGED

    def _add(self, new_lines):
        panic_ended = False
        with self._cond:
            for line in new_lines:
                n = self._count
                self._count += 1
                if self._kept_bytes < CONSOLE_KEPT:
                    self._lines.append(line)
                    self._kept_bytes += len(line) + 1
                elif self.flood is None:
                    self.flood = Flood(n, f"the console printed more than {size(CONSOLE_KEPT)} of text: "
                                          f"lines from {n} on are scanned, not kept; the log file stops at "
                                          f"{size(CONSOLE_LOGGED)} ({self.log_path})")
                self._tail.append((n, line))
                if "harness-mark-" in line:  # the harness's own marks are kept whatever a flood costs
                    self._marks[n] = line
                    if len(self._marks) > 1000:
                        del self._marks[next(iter(self._marks))]
                for watcher in self._watchers:
                    if watcher[2] is None and n >= watcher[1] and watcher[0] in line:
                        watcher[2] = n
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

    def _line(self, i: int) -> str | None:
        """Line ``i`` if it is still held (caller holds the lock)."""
        if i < len(self._lines):
            return self._lines[i]
        if self._tail and self._tail[0][0] <= i:
            return self._tail[i - self._tail[0][0]][1]
        return self._marks.get(i)

    def wait_for_line(self, needle: str, start: int = 0, timeout: float = 10.0) -> int:
        """Index of the first line at or after ``start`` containing ``needle``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            for i in range(start, self._count):
                line = self._line(i)
                if line is not None and needle in line:
                    return i
            watcher: list = [needle, max(start, self._count), None]
            self._watchers.append(watcher)
            try:
                while watcher[2] is None:
                    left = deadline - time.monotonic()
                    if left <= 0 or self.closed:
                        raise GuestError(f"console: no line with {needle!r} within {timeout:.0f}s")
                    self._cond.wait(left)
                return int(watcher[2])
            finally:
                self._watchers = [w for w in self._watchers if w is not watcher]

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
            return "\n".join(line for _, line in list(self._tail)[-n:])

    def text(self, start: int = 0, end: int | None = None) -> str:
        """Lines [start, end); lines a flood cost are one marker line."""
        with self._cond:
            end = self._count if end is None else min(end, self._count)
            out, missing = [], 0
            for i in range(start, end):
                line = self._line(i)
                if line is None:
                    missing += 1
                    continue
                if missing:
                    out.append(f"[harness: {missing} console lines not kept (a flood)]")
                    missing = 0
                out.append(line)
            if missing:
                out.append(f"[harness: {missing} console lines not kept (a flood)]")
            return "\n".join(out)

    def __len__(self):
        return self._count

    def close(self) -> None:
        _close_reader(self._sock, self._thread)


class _Output:
    """One of a job's output streams, bounded: OUTPUT_KEPT bytes in memory
    (``data``), then up to OUTPUT_SPILLED more in a file, then cut."""

    def __init__(self, job: Job, name: str):
        self.job, self.name = job, name
        self.data = bytearray()
        self.total = 0
        self.spill_path: Path | None = None
        self._spill: typing.BinaryIO | None = None

    def add(self, payload: bytes) -> bool:
        """Keep ``payload``; False once the stream is past every cap."""
        self.total += len(payload)
        room = OUTPUT_KEPT - len(self.data)
        if room > 0:
            self.data += payload[:room]
            payload = payload[room:]
        if not payload:
            return True
        spilled = self.total - len(self.data) - len(payload)
        if self._spill is None and spilled == 0 and self.job.channel.spill_dir is not None:
            self.spill_path = self.job.channel.spill_dir / f"{self.job.channel.name}.job{self.job.id}.{self.name}"
            self._spill = open(self.spill_path, "wb")
        if self._spill is not None:
            self._spill.write(payload[:max(0, OUTPUT_SPILLED - spilled)])
        if spilled + len(payload) < OUTPUT_SPILLED:
            return True
        self.close(cut=True)
        return False

    def close(self, cut: bool = False) -> None:
        if self._spill is not None:
            if cut:
                self._spill.write(f"\n--- harness: cut here, after {self.total} bytes ---\n".encode())
            self._spill.close()
            self._spill = None

    @property
    def flooded(self) -> bool:
        return self.total > len(self.data)

    def describe(self) -> str:
        where = f", up to {size(OUTPUT_SPILLED)} more in {self.spill_path}" if self.spill_path else ""
        return (f"{self.total} bytes to {self.name} (the first {size(OUTPUT_KEPT)} kept{where}, "
                "the rest dropped)")


class Job:
    """One command running in the guest."""

    def __init__(self, channel: AgentChannel, job_id: int, command: str, console_line: int = 0):
        self.channel = channel
        self.id = job_id
        self.command = command
        self.console_line = console_line  # where the console was when it started
        self.on_output = None             # on_output(kind, data) as output arrives
        self.keep_output = True           # False: a stream's bytes go to on_output only
        self._out = _Output(self, "stdout")
        self._err = _Output(self, "stderr")
        self.rc: int | None = None
        self.error: str | None = None
        self.flood: _Output | None = None  # the stream that went past every cap (then it was killed)
        self.done = threading.Event()

    @property
    def stdout(self) -> bytearray:
        return self._out.data

    @property
    def stderr(self) -> bytearray:
        return self._err.data

    def output(self, kind: str, payload: bytes) -> None:
        """Output that arrived for the job (the reader thread)."""
        if self.on_output is not None:
            self.on_output(kind, payload)
        if not self.keep_output:
            return
        stream = self._out if kind == "O" else self._err
        if not stream.add(payload) and self.flood is None:
            self.flood = stream
            self.kill_soon()

    def finish(self, rc: int | None = None, error: str | None = None) -> None:
        if rc is not None:
            self.rc = rc
        if error is not None and self.error is None:
            self.error = error
        self._out.close()
        self._err.close()
        self.done.set()

    def wait(self, timeout: float | None = 60.0) -> Result:
        """Result of the job; raises on timeout (after killing it), on a crash,
        on an output flood, or when a splat printed since it started is
        followed by a stall."""
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
                    f"{self.channel.name}: command timed out after {timeout:.0f}s: {self.command}\n"
                    f"--- stdout (tail) ---\n{_tail(self.stdout.decode(errors='replace'))}\n"
                    f"--- stderr (tail) ---\n{_tail(self.stderr.decode(errors='replace'))}\n"
                    f"--- console (tail) ---\n{self.channel.console_tail()}")
        if self.flood is not None:
            raise OutputFlood(f"{self.channel.name}: output flood: the command wrote {self.flood.describe()}; "
                              f"it was killed: {self.command}")
        if self.error is not None:
            raise GuestCrashed(f"{self.channel.name}: {self.error} while running: {self.command}\n"
                               f"--- console (tail) ---\n{self.channel.console_tail()}")
        return Result(self.rc if self.rc is not None else -1, bytes(self.stdout), bytes(self.stderr))

    def kill(self) -> None:
        self.channel.send(self.id, b"K", b"")

    def kill_soon(self) -> None:
        """kill() from the reader thread: in a thread of its own, since a
        send can wait for the guest, which may be waiting for the reader."""
        threading.Thread(target=self.kill, name=f"kill:{self.id}", daemon=True).start()

    @property
    def running(self) -> bool:
        return not self.done.is_set()


class AgentChannel:
    """Frames over the agent's unix socket; a reader thread demultiplexes jobs."""

    def __init__(self, sock: socket.socket, name: str, console: ConsoleLog | None = None):
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
        self.spill_dir: Path | None = None  # where a command's output past OUTPUT_KEPT goes
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

    def wait_ready(self, timeout: float, waited: float | None = None) -> str:
        """The guest's release once its agent said hello; GuestError when
        it is dead or ``timeout`` passes (``waited``: the whole wait so
        far, for the message, when the caller waits in slices)."""
        if not self._hello.wait(timeout) or self._dead:
            raise GuestError(f"{self.name}: the guest agent did not come up within "
                             f"{timeout if waited is None else waited:.0f}s"
                             f"{' (' + self._dead + ')' if self._dead else ''}\n"
                             f"--- console (tail) ---\n{self.console_tail()}")
        return self.release or ""

    @property
    def ready(self) -> bool:
        return self._hello.is_set() and not self._dead

    def send(self, job_id: int, kind: bytes, payload: bytes) -> None:
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
                job.finish(error=self._dead)
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

    def send_input(self, job: Job, data: bytes) -> None:
        """Keystrokes for a ``T`` job, bytes for an ``S`` job's stdin."""
        for at in range(0, len(data), 1 << 16):  # the agent takes frames under 1 MiB
            self.send(job.id, b"I", data[at:at + (1 << 16)])

    def close_input(self, job: Job) -> None:
        """End of an ``S`` job's stdin."""
        self.send(job.id, b"I", b"")

    def resize(self, job: Job, rows: int, cols: int) -> None:
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

    def fail(self, reason: str) -> None:
        """The guest is gone: every waiting job ends with ``reason``."""
        with self._jobs_lock:
            if self._dead is None:
                self._dead = reason
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.finish(error=reason)
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
        """Frames until the channel closes.  A frame that is not the
        agent's protocol marks the guest dead (every waiter ends at once):
        a kernel under test can write anything."""
        reason = "the guest is gone (command channel closed)"
        try:
            while True:
                head = self._recv_exact(HEADER.size)
                if head is None:
                    break
                job_id, length, kind = HEADER.unpack(head)
                if length > MAX_FRAME:
                    raise BadFrame(f"a frame of {length} bytes (at most {MAX_FRAME})")
                payload = self._recv_exact(length) if length else b""
                if payload is None:
                    break
                self._dispatch(job_id, chr(kind), payload)
        except BadFrame as e:
            reason = f"the guest sent a bad frame: {e}"
        except Exception as e:  # a bug here must not leave every waiter waiting
            log.exception("%s: command channel reader failed", self.name)
            reason = f"the command channel's reader failed ({type(e).__name__}: {e})"
        if reason != "the guest is gone (command channel closed)":
            log.error("%s: %s", self.name, reason)
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self.fail(reason)

    def _dispatch(self, job_id: int, kind: str, payload: bytes):
        if kind == "H":
            try:
                self.release = payload.decode()
            except UnicodeDecodeError:
                raise BadFrame(f"a hello that is not UTF-8: {payload[:60]!r}") from None
            self._hello.set()
            return
        if kind not in "OEXFP":
            raise BadFrame(f"unknown frame kind {kind!r} for job {job_id}")
        rc = None
        if kind == "X":
            try:
                rc = int(payload)
            except ValueError:
                raise BadFrame(f"exit status {payload[:60]!r} of job {job_id} is not an integer") from None
        with self._jobs_lock:
            job = self._jobs.get(job_id)
            if job is not None and kind in "XFP":  # P: a ping's echo
                del self._jobs[job_id]
        if job is None:
            return  # a job that ended already (killed, failed)
        if kind in "OE":
            try:
                job.output(kind, payload)
            except Exception as e:  # the host's own handler: that job ends, the channel goes on
                log.exception("%s: output handler of job %d failed", self.name, job_id)
                with self._jobs_lock:
                    self._jobs.pop(job_id, None)
                job.kill_soon()
                job.finish(error=f"its output handler failed ({type(e).__name__}: {e})")
        elif kind == "X":
            job.finish(rc=rc)
        elif kind == "P":
            job.finish(rc=0)
        else:  # F: the agent could not start it
            job.stderr.extend(payload[:OUTPUT_KEPT])
            job.finish(rc=127)

    def close(self) -> None:
        _close_reader(self._sock, self._thread)


def split_dump(data: str) -> dict[str, str]:
    """The output of a 'D' job (Guest.dump): path -> contents."""
    files = {}
    for record in data.split("\0")[1:]:
        path, _, content = record.partition("\n")
        files[path] = content
    return files
