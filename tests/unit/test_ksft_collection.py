"""kselftest-list.txt and settings read as kselftest's runner reads them;
the order a pool takes tests in."""
import pytest

from harness.ksft.collection import (Selftest, longest_first, read_list, read_settings, select,
                                     test_timeout as timeout_of)
from harness.util import HarnessError

# as `make -C tools/testing/selftests TARGETS="net net/forwarding" install` writes it
LIST = """net:reuseport_bpf
net:rps_default_mask.sh
net:fib_rule_tests.sh
net/forwarding:bridge_igmp.sh
net:rps_default_mask.sh
"""


def test_list_names_each_test_once_in_order():
    assert [t.id for t in read_list(LIST)] == [
        "net:reuseport_bpf", "net:rps_default_mask.sh", "net:fib_rule_tests.sh", "net/forwarding:bridge_igmp.sh"]


def test_a_bad_list_line_is_named():
    with pytest.raises(HarnessError, match=r"kselftest-list.txt:2: expected 'collection:test'.*'fib_rule_tests.sh'"):
        read_list("net:a.sh\nfib_rule_tests.sh\n")


def test_targets_are_exact_collections():
    tests = read_list(LIST)
    assert [t.name for t in select(tests, ["net/forwarding"])] == ["bridge_igmp.sh"]
    assert len(select(tests, ["net"])) == 3
    with pytest.raises(HarnessError, match=r"no collection drivers/net .*have: net, net/forwarding"):
        select(tests, ["net", "drivers/net"])


@pytest.mark.parametrize("settings, scale, expected", [
    ("timeout=3600\n", 1, 3600),          # net's own settings (6.12)
    ("timeout=0\n", 4, None),             # net/forwarding: no timeout
    ("# no timeout line\n", 1, 45),       # runner.sh's default
    ("timeout=120\n", 4, 480),            # stretched for a slow machine (TCG, KASAN)
])
def test_timeout_from_settings(settings, scale, expected):
    assert timeout_of(read_settings(settings), scale=scale) == expected


def test_a_bad_timeout_is_named():
    with pytest.raises(HarnessError, match=r"net/settings: timeout='ten': expected whole seconds"):
        timeout_of(read_settings("timeout=ten"), source="net/settings")
    with pytest.raises(HarnessError, match=r"settings:1: expected 'field=value'"):
        read_settings("timeout 10")


def test_longest_previous_runtime_first_and_new_tests_before_all():
    a, b, c, d = (Selftest("net", n) for n in "abcd")
    assert longest_first([a, b, c, d], {"net:a": 3.0, "net:b": 90.0, "net:d": 12.5}) == [c, b, d, a]
