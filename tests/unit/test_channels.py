"""The host side of a guest's two channels, over socket pairs: whatever
bytes the guest sends, the host survives it.  A bad frame marks the guest
dead and every waiter ends at once; a flood costs bounded memory and disk
and is named."""
import socket
import threading
import time

import pytest

from harness.lab.nest import parse_reply
from harness.vm import console
from harness.vm.console import (HEADER, AgentChannel, ConsoleLog, GuestCrashed, GuestError, OutputFlood)


class FakeAgent:
    """The guest's end of the command channel: sends frames, reads the host's."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.received: list[tuple[int, str, bytes]] = []
        self._buf = b""

    def frame(self, job_id: int, kind: str, payload: bytes = b"", length: int | None = None):
        self.sock.sendall(HEADER.pack(job_id, len(payload) if length is None else length, ord(kind)) + payload)

    def hello(self, release: bytes = b"6.12.0-test"):
        self.frame(0, "H", release)

    def host_frames(self, timeout: float = 2.0) -> list[tuple[int, str, bytes]]:
        """Frames the host sent so far (start, kill, input)."""
        self.sock.settimeout(0.05)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                break
            if not data:
                break
            self._buf += data
        while len(self._buf) >= HEADER.size:
            job_id, length, kind = HEADER.unpack(self._buf[:HEADER.size])
            if len(self._buf) < HEADER.size + length:
                break
            self.received.append((job_id, chr(kind), self._buf[HEADER.size:HEADER.size + length]))
            self._buf = self._buf[HEADER.size + length:]
        return self.received


@pytest.fixture
def channel():
    ours, theirs = socket.socketpair()
    chan = AgentChannel(ours, "g1")
    agent = FakeAgent(theirs)
    agent.hello()
    chan.wait_ready(2)
    yield chan, agent
    chan.close()
    theirs.close()


def ends_within(job, seconds: float, timeout=None):
    """job.wait(timeout) raises; returns (exception, seconds it took)."""
    t0 = time.monotonic()
    with pytest.raises(GuestError) as info:
        job.wait(timeout)
    took = time.monotonic() - t0
    assert took < seconds, f"the wait took {took:.1f}s"
    return info.value


@pytest.mark.parametrize("frame, named", [
    ((1, "X", b"zero"), "is not an integer"),
    ((1, "Q", b""), "unknown frame kind"),
    ((1, "O", b"", 1 << 30), "a frame of 1073741824 bytes"),
])
def test_a_bad_frame_marks_the_guest_dead_and_pending_waits_end_within_a_second(channel, frame, named):
    chan, agent = channel
    job = chan.start("sleep 100")
    other = chan.start("cat")                       # a wait without a timeout, as harness run does
    waiter = threading.Thread(target=lambda: pytest.raises(GuestCrashed, other.wait, None))
    waiter.start()
    time.sleep(0.1)
    assert job.running and other.running           # both really were waiting
    agent.frame(*frame)
    error = ends_within(job, 1.0, timeout=600)
    assert isinstance(error, GuestCrashed) and named in str(error)
    waiter.join(1.0)
    assert not waiter.is_alive()
    assert chan.dead is not None and named in chan.dead
    later = chan.start("true")                     # nothing waits on a dead channel
    ends_within(later, 1.0, timeout=600)


def test_a_hello_that_is_not_utf8_fails_the_boot_wait_at_once():
    ours, theirs = socket.socketpair()
    chan = AgentChannel(ours, "g1")
    FakeAgent(theirs).frame(0, "H", b"\xff\xfe6.12")
    t0 = time.monotonic()
    with pytest.raises(GuestError, match="not UTF-8"):
        chan.wait_ready(60)
    assert time.monotonic() - t0 < 1.0
    chan.close()
    theirs.close()


def test_a_failing_output_handler_ends_its_own_job_only(channel):
    chan, agent = channel

    def broken(kind, data):
        raise BrokenPipeError("stdout closed")

    streamed = chan.start("yes", on_output=broken)
    plain = chan.start("echo hi")
    agent.frame(streamed.id, "O", b"y\n")
    error = ends_within(streamed, 1.0, timeout=600)
    assert "output handler failed" in str(error) and "BrokenPipeError" in str(error)
    assert (streamed.id, "K", b"") in agent.host_frames()   # and it was killed in the guest
    agent.frame(plain.id, "O", b"hi\n")
    agent.frame(plain.id, "X", b"0")
    result = plain.wait(2)
    assert (result.rc, result.stdout) == (0, "hi\n")
    assert chan.dead is None


def test_a_closed_channel_ends_every_wait(channel):
    chan, agent = channel
    job = chan.start("sleep 100")
    agent.sock.close()
    error = ends_within(job, 1.0, timeout=None)
    assert "command channel closed" in str(error)


def test_an_output_flood_is_cut_spilled_to_disk_and_named(channel, monkeypatch, tmp_path):
    chan, agent = channel
    monkeypatch.setattr(console, "OUTPUT_KEPT", 1 << 20)
    monkeypatch.setattr(console, "OUTPUT_SPILLED", 4 << 20)
    chan.spill_dir = tmp_path
    job = chan.start("cat /dev/zero")
    chunk = b"z" * (64 << 10)
    sent = 0
    for _ in range(160):                            # 10 MiB, more than every cap
        agent.frame(job.id, "O", chunk)
        sent += len(chunk)
    deadline = time.monotonic() + 5
    while not any(k == "K" for _, k, _ in agent.host_frames(0.1)) and time.monotonic() < deadline:
        pass
    assert (job.id, "K", b"") in agent.received     # killed once past the caps
    agent.frame(job.id, "X", b"137")
    with pytest.raises(OutputFlood, match=f"wrote {sent} bytes to stdout") as info:
        job.wait(5)
    assert str(tmp_path) in str(info.value)
    assert len(job.stdout) == 1 << 20
    spill = next(tmp_path.iterdir())
    assert (4 << 20) <= spill.stat().st_size < (4 << 20) + 200
    assert spill.read_bytes().endswith(f"--- harness: cut here, after {5 << 20} bytes ---\n".encode())


def console_pair(tmp_path):
    ours, theirs = socket.socketpair()
    return ConsoleLog(ours, tmp_path / "g1.console.log"), theirs


def test_a_console_flood_keeps_memory_and_the_log_bounded_and_still_sees_marks_and_splats(tmp_path, monkeypatch):
    monkeypatch.setattr(console, "CONSOLE_KEPT", 1 << 20)
    monkeypatch.setattr(console, "CONSOLE_LOGGED", 2 << 20)
    log, kernel = console_pair(tmp_path)
    line = b"[    1.000000] flood " + b"x" * 100 + b"\n"
    count = (4 << 20) // len(line)                  # 4 MiB of console
    kernel.sendall(line * count)
    kernel.sendall(b"[    2.000000] WARNING: CPU: 1 PID: 7 at net/core/dev.c:1 f+0x1/0x2\n")
    kernel.sendall(b"[    2.000001] harness-mark-1\n")
    assert log.wait_for_line("harness-mark-1", 0, timeout=10) == count + 1
    assert len(log) == count + 2
    assert log.flood is not None and log.flood.line_no < count
    assert [s.kind for s in log.splats_between(0)] == ["warning"]
    text = log.text(0)
    assert "console lines not kept (a flood)" in text and text.endswith("harness-mark-1")
    log.close()
    kernel.close()
    size = (tmp_path / "g1.console.log").stat().st_size
    assert (2 << 20) <= size < (2 << 20) + 200


def test_a_console_line_without_an_end_is_cut(tmp_path, monkeypatch):
    monkeypatch.setattr(console, "LONGEST_LINE", 1000)
    log, kernel = console_pair(tmp_path)
    kernel.sendall(b"a" * 5000 + b"\nharness-mark-2\n")
    assert log.wait_for_line("harness-mark-2", 0, timeout=5) == 5
    log.close()
    kernel.close()


@pytest.mark.parametrize("line, reply", [
    (b'{"id": 3, "path": "/run/x"}', {"id": 3, "path": "/run/x"}),
    (b"Traceback (most recent call last):", None),
    (b'{"id": "3"}', None),
    (b"[1, 2]", None),
    (b"\xff\xfe", None),
    (b"", None),
])
def test_the_nest_servers_stdout_lines_that_are_not_replies_are_not_replies(line, reply):
    assert parse_reply(line) == reply


def test_a_mark_that_a_flood_buried_is_still_found(tmp_path, monkeypatch):
    """The mark arrives, then more lines than the tail holds, before the
    waiter looks: the harness's own marks are kept whatever a flood costs."""
    monkeypatch.setattr(console, "CONSOLE_KEPT", 64 << 10)
    log, kernel = console_pair(tmp_path)
    kernel.sendall(b"x" * 100 + b"\n" * 1)
    kernel.sendall((b"y" * 100 + b"\n") * 2000 + b"harness-mark-9\n" + (b"z" * 100 + b"\n") * 300)
    deadline = time.monotonic() + 10
    while len(log) < 2302 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.flood is not None
    assert log.wait_for_line("harness-mark-9", 0, timeout=2) == 2001
    log.close()
    kernel.close()


def test_a_warning_in_a_hot_path_costs_bounded_memory(tmp_path):
    from harness.vm.splat import MAX_SPLATS_PER_KIND
    log, kernel = console_pair(tmp_path)
    warn = (b"[    1.000000] WARNING: CPU: 0 PID: 1 at net/core/dev.c:1 f+0x1/0x2\n"
            b"[    1.000001] ---[ end trace 0 ]---\n")
    kernel.sendall(warn * 5000 + b"harness-mark-3\n")
    log.wait_for_line("harness-mark-3", 0, timeout=20)
    assert len(log.splats_between(0)) == MAX_SPLATS_PER_KIND
    assert log.scanner.dropped == {"warning": 5000 - MAX_SPLATS_PER_KIND}
    log.close()
    kernel.close()
