"""The selftest runner's pure parts: judging one run_kselftest.sh output,
reading make's ignored errors, sizing the pool, flakes."""
from harness.ksft.build import failed_programs
from harness.ksft.collection import Selftest
from harness.ksft.runner import Attempt, KsftResult, default_jobs, judge

TLS_FAIL = """TAP version 13
1..1
# timeout set to 3600
# selftests: net: tls
# TAP version 13
# 1..3
# ok 1 global.sendfile
# not ok 2 global.splice
# ok 3 global.zerocopy # SKIP no zerocopy here
not ok 1 selftests: net: tls # exit=1
"""


def test_the_runner_line_decides_and_nested_results_are_subtests():
    outcome, reason, subtests = judge(TLS_FAIL, 0)
    assert outcome == "fail"
    assert reason == "exit=1; failed subtests: global.splice"
    assert [(s["name"], s["outcome"]) for s in subtests] == [
        ("global.sendfile", "pass"), ("global.splice", "fail"), ("global.zerocopy", "skip")]


def test_exit_4_is_a_skip_with_the_tests_own_reason():
    text = ("TAP version 13\n1..1\n# selftests: net: vxlan.sh\n"
            "# SKIP: Could not run test without the bridge mdb command\n"
            "ok 1 selftests: net: vxlan.sh # SKIP\n")
    assert judge(text, 0)[:2] == ("skip", "SKIP: Could not run test without the bridge mdb command")


def test_a_skip_that_prints_no_reason_says_so():
    # net/rps_default_mask.sh on 2 vCPUs: `[ $cpus -gt 2 ] || exit $ksft_skip`
    text = ("TAP version 13\n1..1\n# overriding timeout to 14400\n# selftests: net: rps_default_mask.sh\n"
            "ok 1 selftests: net: rps_default_mask.sh # SKIP\n")
    assert judge(text, 0)[:2] == ("skip", "exit 4 (kselftest's skip), no reason printed")


def test_timeout_and_a_missing_result_line():
    text = "1..1\n# selftests: net: slow.sh\nnot ok 1 selftests: net: slow.sh # TIMEOUT 12 seconds\n"
    assert judge(text, 0)[:2] == ("timeout", "TIMEOUT: 12 seconds")
    assert judge("bash: ./run_kselftest.sh: not found\n", 127)[:2] == (
        "fail", "no kselftest result line (run_kselftest.sh exit 127)")


def test_a_pass_after_a_failure_is_a_flake_and_keeps_both():
    t = Selftest("net", "fib_rule_tests.sh")
    flaky = KsftResult(t, [Attempt("fail", 30.0, "exit=1", "ksft1"), Attempt("pass", 28.0, "", "ksft2")])
    assert flaky.outcome == "flaky"
    assert [a["outcome"] for a in flaky.to_json()["attempts"]] == ["fail", "pass"]
    assert KsftResult(t, [Attempt("fail", 1, "", "g"), Attempt("fail", 1, "", "g")]).outcome == "fail"
    assert KsftResult(t, [Attempt("skip", 1, "", "g")]).outcome == "skip"


def test_make_ignored_errors_name_the_programs_that_did_not_build():
    log = """gcc -o /src/tools/testing/selftests/net/tcp_ao/foo foo.c
foo.c:1:10: fatal error: libmnl/libmnl.h: No such file or directory
make[2]: [../lib.mk:222: /src/tools/testing/selftests/net/mnl_helper] Error 1 (ignored)
make[2]: [Makefile:50: /src/tools/testing/selftests/net/nat6to4.bpf.o] Error 127 (ignored)
make[1]: [Makefile:175: install] Error 23 (ignored)
make[2]: [../lib.mk:222: /src/tools/testing/selftests/net/mnl_helper] Error 1 (ignored)
"""
    assert failed_programs(log, "/src/tools/testing/selftests") == ["net/mnl_helper", "net/nat6to4.bpf.o"]


def test_pool_size_from_cpus_and_memory():
    assert default_jobs(2, 1024, host_cpus=2, host_available_mb=20000) == 1
    assert default_jobs(2, 1024, host_cpus=16, host_available_mb=100000) == 8
    assert default_jobs(2, 1024, host_cpus=16, host_available_mb=3000) == 1


def test_failures_are_classified_kernel_missing_tool_or_harness():
    from harness.ksft.runner import classify
    t = Selftest("net", "x.sh")
    assert classify(KsftResult(t, [Attempt("fail", 1, "exit=1", "g", output="# FAIL: route not added")])) == "kernel"
    assert classify(KsftResult(t, [Attempt("fail", 1, "exit=1", "g",
                                            output="# ./x.sh: line 3: nettest: command not found")])) == "missing tool"
    assert classify(KsftResult(t, [Attempt("not built", 0, "net/x.sh is not installed", "g")])) == "missing tool"
    assert classify(KsftResult(t, [Attempt("fail", 0, "harness: ksft1: libvirt could not start", "-")])) == "harness"
    assert classify(KsftResult(t, [Attempt("crash", 3, "ksft1: kernel panic", "g",
                                            splats=[{"kind": "panic", "title": "", "text": ""}])])) == "kernel"


def test_harness_ksft_passes_what_follows_double_dash_to_pytest(monkeypatch):
    from harness import cli
    seen = {}
    monkeypatch.setattr(cli, "cmd_ksft", lambda args: seen.update(vars(args)) or 0)
    argv = ["ksft", "net", "-k", "net:tun or net:tap", "--jobs", "1", "--", "-q", "--harness-logs", "/x"]
    assert cli.main(argv) == 0
    assert (seen["targets"], seen["k"], seen["jobs"]) == ("net", "net:tun or net:tap", 1)
    assert seen["pytest_args"] == ["-q", "--harness-logs", "/x"]


def test_a_result_survives_its_json_round_trip():
    t = Selftest("net", "x.sh")
    result = KsftResult(t, [Attempt("fail", 1.5, "exit=1", "g1", [{"name": "a", "outcome": "fail", "reason": ""}],
                                    [{"kind": "warning", "title": "WARNING: x", "text": "t"}], "out1"),
                            Attempt("pass", 2.0, "", "g2")])
    back = KsftResult.from_json(result.to_json(), {1: "out1", 2: ""}.get)
    assert back == result and back.outcome == "flaky"
