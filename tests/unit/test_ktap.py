"""KTAP as kselftest's runner prints it: nested results, SKIP with the
test's own reason, XFAIL, TIMEOUT."""
from pathlib import Path

from harness.ksft.ktap import parse, skip_reason, strip_prefixes, output_of

SAMPLE = (Path(__file__).parent / "data" / "ksft-net-sample.tap").read_text()


def test_runner_results_and_their_outcomes():
    top = [r for r in parse(SAMPLE) if r.depth == 0]
    assert [(r.number, r.name, r.outcome) for r in top] == [
        (1, "selftests: net: rps_default_mask.sh", "pass"),
        (2, "selftests: net: tls", "fail"),
        (3, "selftests: net: test_vxlan_mdb.sh", "skip"),
        (4, "selftests: net: slow.sh", "timeout")]
    assert top[3].reason == "30 seconds"


def test_nested_results_belong_to_their_test():
    nested = [r for r in parse(SAMPLE) if r.depth == 1]
    assert [(r.name, r.outcome, r.reason) for r in nested] == [
        ("global.sendfile", "pass", ""), ("global.splice", "fail", ""),
        ("global.zerocopy", "skip", "no zerocopy here")]


def test_a_skip_reason_comes_from_the_test_itself():
    vxlan = [r for r in parse(SAMPLE) if r.depth == 0][2]
    assert skip_reason(SAMPLE, vxlan) == "SKIP: Could not run test without the bridge mdb command"
    assert "SKIP: Could not run" in "\n".join(output_of(SAMPLE, vxlan))


def test_xfail_todo_and_four_space_nesting():
    text = "KTAP version 1\n1..2\n    KTAP version 1\n    1..1\n    ok 1 inner # XFAIL known bug\nok 1 outer\n" \
           "not ok 2 later # TODO not yet\n"
    results = parse(text)
    assert [(r.name, r.depth, r.outcome) for r in results] == [
        ("inner", 1, "xfail"), ("outer", 0, "pass"), ("later", 0, "xfail")]


def test_diagnostics_are_not_nesting():
    assert strip_prefixes("# TEST: ipv4 route add [ OK ]") == (0, "# TEST: ipv4 route add [ OK ]")
    assert strip_prefixes("# # ok 3 deep") == (2, "ok 3 deep")
