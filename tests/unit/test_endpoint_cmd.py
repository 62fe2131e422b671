"""cmd(): one way to run a host command; whatever ends its wait ends
everything it started."""
import os
import subprocess
import time

import pytest

from harness.endpoint import CommandFailed, cmd


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
