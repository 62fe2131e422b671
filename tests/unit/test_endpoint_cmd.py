"""cmd(): one way to run a host command; whatever ends its wait ends
everything it started."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from harness.endpoint import CommandFailed, cmd
from harness.util import REPO, Terminated, terminate_as_interrupt


def test_output_input_and_files(tmp_path):
    assert cmd(["cat"], input=b"abc").stdout == "abc"
    with open(tmp_path / "out", "wb") as f:
        cmd(["sh", "-c", "echo to-file"], capture_output=False, stdout=f)
    assert (tmp_path / "out").read_text() == "to-file\n"
    with pytest.raises(CommandFailed, match="rc=3"):
        cmd(["sh", "-c", "exit 3"])


def test_a_timeout_ends_the_whole_process_group(tmp_path):
    pids = tmp_path / "pids"
    with pytest.raises(subprocess.TimeoutExpired):
        cmd(["sh", "-c", f"sleep 100 & echo $! > {pids}; sleep 100"], timeout=1)
    pid = int(pids.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"the command's background child {pid} outlived the timeout")


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its reaper."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_when_cmd_returns_from_a_timeout_its_group_is_already_gone(tmp_path):
    pids = tmp_path / "pids"
    with pytest.raises(subprocess.TimeoutExpired):
        cmd(["sh", "-c", f"sleep 100 & echo $! > {pids}; sleep 100"], timeout=1)
    assert not _running(int(pids.read_text())), "the background child still ran when cmd() returned"


def test_a_signal_landing_in_the_fork_is_raised_once_the_child_can_be_stopped(monkeypatch):
    started = []
    real = subprocess.Popen

    def popen_then_sigterm(*args, **kw):
        proc = real(*args, **kw)
        started.append(proc)
        os.kill(os.getpid(), signal.SIGTERM)  # before cmd() has the child in hand
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen_then_sigterm)
    with terminate_as_interrupt(), pytest.raises(Terminated):
        cmd(["sleep", "100"])
    assert started and not _running(started[0].pid), "the command outlived the signal that ended cmd()"


def test_a_command_of_another_thread_ends_with_the_process(tmp_path):
    pids = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import os, threading, time
        from harness.endpoint import cmd
        threading.Thread(target=cmd, args=(["sh", "-c", "sleep 100 & echo $! > {pids}; sleep 100"],),
                         daemon=True).start()
        while not os.path.exists("{pids}") or not open("{pids}").read():
            time.sleep(0.01)
    """)
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=60)
    assert not _running(int(pids.read_text())), "a thread's command outlived the process"
