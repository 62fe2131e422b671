"""The one-shot commands as a kernel developer uses them: `harness run --
CMD` and `harness shell`, each a fresh guest torn down at exit."""
import subprocess
import sys

from harness.util import REPO


def cli(pytestconfig, *args, input=None, timeout=300):
    command, *rest = args
    argv = [sys.executable, "-m", "harness.cli", command, "--accel", pytestconfig.getoption("accel")]
    if pytestconfig.getoption("kernel"):
        argv += ["--kernel", pytestconfig.getoption("kernel")]
    argv += rest
    return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, cwd=REPO / "tests")


def test_run_streams_the_output_and_exits_with_the_commands_code(harness, pytestconfig):
    r = cli(pytestconfig, "run", "--", "sh", "-c", "pwd; uname -r; echo err >&2; exit 3")
    assert r.returncode == 3, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(REPO / "tests")   # the host's current directory
    assert lines[1] == harness.kernel.release
    assert "err" in r.stderr


def test_run_reports_a_splat_and_fails(harness, pytestconfig):
    r = cli(pytestconfig, "run", "--", "sh", "-c",
                "echo '<4>WARNING: CPU: 0 PID: 1 at net/core/dev.c:4242 harness_cli+0x0/0x10' > /dev/kmsg")
    assert r.returncode == 1
    assert "kernel warning while the command ran" in r.stderr and "dev.c:4242" in r.stderr


def test_shell_reads_commands_and_ends_with_its_input(harness, pytestconfig):
    r = cli(pytestconfig, "shell", input="echo shell-$((6 * 7))\nexit 5\n")
    assert "shell-42" in r.stdout, r.stdout + r.stderr
    assert r.returncode == 5
