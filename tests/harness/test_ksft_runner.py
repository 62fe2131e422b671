"""The selftest runner on real guests: a collection of small tests that
fail, skip, warn, crash the kernel, hang and flake on purpose, run through
the kernel's own run_kselftest.sh (from the installed net selftests)."""
import shutil
import textwrap

import pytest

from harness.ksft.build import Installed, install, source_for
from harness.ksft.collection import Selftest
from harness.ksft.runner import Pool

TESTS = {
    "pass.sh": "echo all good",
    "fail.sh": """\
        echo "TAP version 13"; echo "1..2"
        echo "ok 1 link_up"; echo "not ok 2 route_added"
        exit 1""",
    "skip.sh": 'echo "SKIP: Could not run test without the frobnicate tool"; exit 4',
    "warn.sh": "echo '<4>WARNING: CPU: 0 PID: 1 at net/core/dev.c:4242 ksft_runner_test+0x0/0x10' > /dev/kmsg",
    "crash.sh": "echo c > /proc/sysrq-trigger; sleep 30",
    "hang.sh": "sleep 600",
    # fails on the pool's first guest only: a flake, deterministically
    "flaky.sh": '[ "$(hostname)" = ksft1 ] && { echo "not this time"; exit 1; }; exit 0',
}


@pytest.fixture(scope="module")
def fixture_install(harness):
    """run_kselftest.sh and its runner from the built net selftests, and a
    collection `runner` of the tests above (timeout 2 s, x4 under TCG)."""
    real = install(source_for("debian:6.12"), ["net"])
    root = harness.log_dir / "ksft-runner-fixture"  # wherever --harness-logs put it: the pool's guests share it
    shutil.rmtree(root, ignore_errors=True)
    (root / "runner").mkdir(parents=True)
    shutil.copy(real.path / "run_kselftest.sh", root)
    shutil.copytree(real.path / "kselftest", root / "kselftest")
    for name, body in TESTS.items():
        script = root / "runner" / name
        script.write_text("#!/bin/sh\n" + textwrap.dedent(body) + "\n")
        script.chmod(0o755)
    (root / "runner" / "settings").write_text("timeout=2\n")
    (root / "kselftest-list.txt").write_text("".join(f"runner:{n}\n" for n in TESTS))
    return Installed(root, "fixture", ("runner",), (), real.build_log)


def run(harness, fixture_install, names, tmp_path, retries=0):
    # times={}: the tests run in the order given, and no runtime is recorded for them
    pool = Pool(fixture_install, harness.kernel, accel=harness.accel, jobs=1, retries=retries,
                log_dir=harness.log_dir / "ksft-runner" / tmp_path.name, times={})
    tests = [Selftest("runner", n) for n in names]
    try:
        pool.start(tests)
        return [pool.result(t) for t in tests]
    finally:
        pool.close()


def test_a_failing_selftest_fails_and_names_its_failed_subtest(harness, fixture_install, tmp_path):
    failed, skipped = run(harness, fixture_install, ["fail.sh", "skip.sh"], tmp_path)
    assert (failed.outcome, failed.attempts[0].reason) == ("fail", "exit=1; failed subtests: route_added")
    assert [(s["name"], s["outcome"]) for s in failed.attempts[0].subtests] == [
        ("link_up", "pass"), ("route_added", "fail")]
    assert (skipped.outcome, skipped.attempts[0].reason) == (
        "skip", "SKIP: Could not run test without the frobnicate tool")


def test_a_splat_fails_the_test_that_printed_it_and_no_other(harness, fixture_install, tmp_path):
    before, warned, after = run(harness, fixture_install, ["pass.sh", "warn.sh", "skip.sh"], tmp_path)
    assert before.outcome == "pass"
    assert warned.outcome == "fail" and "dev.c:4242" in warned.attempts[0].splats[0]["text"]
    assert after.outcome == "skip" and not after.attempts[0].splats


def test_a_crash_fails_its_test_with_the_panic_and_the_next_test_gets_a_fresh_guest(
        harness, fixture_install, tmp_path):
    crashed, after = run(harness, fixture_install, ["crash.sh", "pass.sh"], tmp_path)
    assert crashed.outcome == "crash"
    assert "panic" in [s["kind"] for s in crashed.attempts[0].splats]
    assert after.outcome == "pass"
    assert after.attempts[0].guest != crashed.attempts[0].guest


def test_a_hanging_selftest_is_killed_at_its_scaled_timeout(harness, fixture_install, tmp_path):
    hung, = run(harness, fixture_install, ["hang.sh"], tmp_path)
    scale = 4.0 if harness.accel == "tcg" else 1.0
    assert hung.outcome == "timeout", hung.attempts[0].output
    assert hung.attempts[0].reason == f"TIMEOUT: {int(2 * scale * harness.kernel.time_scale)} seconds"
    assert hung.attempts[0].seconds < 2 * scale * harness.kernel.time_scale + 30


def test_a_failure_is_retried_in_a_fresh_guest_and_a_pass_then_is_a_flake(harness, fixture_install, tmp_path):
    flaky, failed = run(harness, fixture_install, ["flaky.sh", "fail.sh"], tmp_path, retries=1)
    assert [a.outcome for a in flaky.attempts] == ["fail", "pass"]
    assert flaky.attempts[0].guest != flaky.attempts[1].guest
    assert flaky.outcome == "flaky"
    assert [a.outcome for a in failed.attempts] == ["fail", "fail"] and failed.outcome == "fail"
