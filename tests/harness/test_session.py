"""Splat attribution, panics, clear session errors and reaping (issue 2).

These run pytest itself in a subprocess on a small test file, because what
they check is how the plugin reports a session.
"""
import signal
import subprocess
import textwrap
import xml.etree.ElementTree as ET

from harness.invocation import inherited, pytest_argv

from harness.vm.guest import libvirt_conn, reap_stale_guests

INNER = textwrap.dedent('''
    import time

    def test_warning(guest):
        guest.check("echo '<4>WARNING: CPU: 0 PID: 1 at net/core/dev.c:1234 harness_selftest+0x0/0x10' > /dev/kmsg")

    def test_after_warning(guest):
        guest.check("true")

    def test_warning_then_stall(guest):
        guest.run("echo '<4>WARNING: CPU: 0 PID: 1 at net/core/dev.c:5678 harness_stall+0x0/0x10' > /dev/kmsg; "
                  "sleep 100", timeout=120)

    def test_panic(guest):
        guest.run("echo c > /proc/sysrq-trigger", timeout=120)

    def test_after_panic(guest):
        assert guest.check("echo alive").stdout == "alive\\n"
''')


def _pytest(pytestconfig, tmp_path, *args):
    return pytest_argv(*args, rootdir=tmp_path, logs=tmp_path / "logs", **inherited(pytestconfig))


def _junit(path):
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        failure = case.find("failure")
        cases[case.get("name")] = (float(case.get("time")),
                                   None if failure is None else failure.get("message", "") + (failure.text or ""))
    return cases


def test_splat_fails_the_test_that_caused_it_and_panic_fails_fast(harness, pytestconfig, tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)
    junit = tmp_path / "junit.xml"
    run = subprocess.run(_pytest(pytestconfig, tmp_path, str(tmp_path / "test_inner.py"),
                                 f"--junitxml={junit}"),
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    cases = _junit(junit)
    assert set(cases) == {"test_warning", "test_after_warning", "test_warning_then_stall", "test_panic",
                          "test_after_panic"}, run.stdout
    # The WARNING fails the test that printed it, with the splat text; not the next one.
    assert cases["test_warning"][1] is not None
    assert "net/core/dev.c:1234" in cases["test_warning"][1]
    assert cases["test_after_warning"][1] is None, cases["test_after_warning"][1]
    # A command that stalls after a splat ends within seconds, not at its 120 s timeout.
    assert cases["test_warning_then_stall"][1] is not None
    assert "net/core/dev.c:5678" in cases["test_warning_then_stall"][1]
    assert cases["test_warning_then_stall"][0] < 20
    # The panic fails its command within seconds, not at the 120 s timeout...
    assert cases["test_panic"][1] is not None and "Kernel panic" in cases["test_panic"][1]
    assert cases["test_panic"][0] < 15
    # ...and the next test runs on a fresh guest.
    assert cases["test_after_panic"][1] is None, cases["test_after_panic"][1]
    # The per-test console slice is kept as an artifact.
    slices = list((tmp_path / "logs").glob("*/tests/*_test_warning/*.console.log"))
    assert slices and "net/core/dev.c:1234" in slices[0].read_text()


def test_missing_kernel_is_one_clear_error(tmp_path):
    (tmp_path / "test_one.py").write_text("def test_x(guest):\n    pass\n")
    run = subprocess.run(pytest_argv(tmp_path / "test_one.py", rootdir=tmp_path, kernel="/nonexistent/bzImage"),
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 4, out  # pytest's usage error
    assert out.count("--kernel /nonexistent/bzImage: no such file") == 1, out
    assert "Traceback" not in out


def test_guests_of_a_killed_run_are_reaped(harness, pytestconfig, tmp_path):
    (tmp_path / "test_hang.py").write_text(textwrap.dedent('''
        import time
        def test_hang(guest):
            print("GUEST-UP", flush=True)
            time.sleep(600)
    '''))
    child = subprocess.Popen(_pytest(pytestconfig, tmp_path, "-s", str(tmp_path / "test_hang.py")),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        for line in child.stdout:
            if "GUEST-UP" in line:
                break
        prefix = f"harness-{child.pid}-"
        assert any(d.name().startswith(prefix) for d in libvirt_conn().listAllDomains())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    reaped = reap_stale_guests()
    assert any(name.startswith(prefix) for name in reaped)
    assert not any(d.name().startswith(prefix) for d in libvirt_conn().listAllDomains())


FLOODS = textwrap.dedent('''
    import pytest
    from harness.vm import console

    # small caps, so that a flood is quick to make under TCG
    console.CONSOLE_KEPT = 256 << 10
    console.OUTPUT_KEPT = 1 << 20
    console.OUTPUT_SPILLED = 4 << 20

    def test_console_flood(guest):
        guest.check("i=0; while [ $i -lt 4000 ]; do "
                    "echo \\"<3>harness flood line $i: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\\" > /dev/kmsg; "
                    "i=$((i+1)); done", timeout=300)

    def test_after_console_flood(guest):
        assert guest.check("echo alive").stdout == "alive\\n"

    def test_output_flood(guest):
        with pytest.raises(console.OutputFlood) as info:
            guest.run("cat /dev/zero", timeout=300)
        print("FLOOD:", info.value)
        assert len(guest.agent._jobs) == 0
        assert guest.check("echo alive").stdout == "alive\\n"
''')


def test_floods_cost_bounded_host_memory_and_are_named(harness, pytestconfig, tmp_path):
    """A kernel that floods its console fails the test that was running,
    naming the flood, and the next test gets a fresh guest; a command that
    floods its output is killed past the caps and named, its guest goes on."""
    (tmp_path / "test_floods.py").write_text(FLOODS)
    junit = tmp_path / "junit.xml"
    run = subprocess.run(_pytest(pytestconfig, tmp_path, "-s", str(tmp_path / "test_floods.py"),
                                 f"--junitxml={junit}"),
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    cases = _junit(junit)
    assert set(cases) == {"test_console_flood", "test_after_console_flood", "test_output_flood"}, run.stdout
    assert cases["test_console_flood"][1] is not None
    assert "console flood in guest" in cases["test_console_flood"][1]
    assert "more than 256 KiB of text" in cases["test_console_flood"][1]
    assert cases["test_after_console_flood"][1] is None, cases["test_after_console_flood"][1]
    assert cases["test_output_flood"][1] is None, cases["test_output_flood"][1]
    flood = next(line.split("FLOOD:", 1)[1] for line in run.stdout.splitlines() if "FLOOD:" in line)
    assert "output flood: the command wrote" in flood and "(the first 1 MiB kept, up to 4 MiB more in" in flood


def test_a_sigterm_tears_the_session_down_and_leaves_nothing(harness, pytestconfig, tmp_path):
    """SIGTERM to a pytest run unwinds it as Ctrl-C does: fixtures torn
    down (the guest destroyed, its run directory gone) before it exits."""
    (tmp_path / "test_hang.py").write_text(textwrap.dedent('''
        import time
        def test_hang(guest):
            print("GUEST-UP", flush=True)
            guest.run("sleep 600", timeout=700)
    '''))
    child = subprocess.Popen(_pytest(pytestconfig, tmp_path, "-s", str(tmp_path / "test_hang.py")),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    prefix = f"harness-{child.pid}-"
    try:
        for line in child.stdout:
            if "GUEST-UP" in line:
                break
        assert any(d.name().startswith(prefix) for d in libvirt_conn().listAllDomains())
        child.send_signal(signal.SIGTERM)
        rest = child.communicate(timeout=60)[0]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0 and "terminated by SIGTERM" in rest, rest[-3000:]
    assert not any(d.name().startswith(prefix) for d in libvirt_conn().listAllDomains())
    from harness.util import RUN_ROOT
    assert not [d for d in RUN_ROOT.iterdir() if d.name.startswith(prefix)]
