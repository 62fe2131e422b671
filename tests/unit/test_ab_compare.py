"""A/B comparisons on known samples, and sweeps checked against workloads."""
import random

import pytest

from harness.ab.stats import compare
from harness.cli import parse_sweep
from harness.util import HarnessError
from harness.ab.workloads import WORKLOADS


def per_boot(rng, centre, n_boots=4, runs=5, sd=2.0):
    return [[centre + rng.gauss(0, sd) for _ in range(runs)] for _ in range(n_boots)]



def test_compare_same_distribution_is_no_change():
    rng = random.Random(1)
    s = compare(16, per_boot(rng, 100), per_boot(rng, 100))
    assert s.verdict == "no significant change" and s.p_value > 0.05


def test_compare_shifted_distribution_is_slower_by_its_size():
    rng = random.Random(2)
    a, b = per_boot(rng, 100), per_boot(rng, 80)
    s = compare(16, a, b)
    assert s.verdict == "slower" and s.p_value < 0.001
    assert s.change_pct == pytest.approx(-20, abs=3)
    assert s.ci_a[0] <= s.median_a <= s.ci_a[1]
    assert compare(16, a, b, higher_is_better=False).verdict == "faster"


def test_compare_tiny_significant_change_is_below_the_minimum_effect():
    a = [[100.0 + i * 0.01 + j * 0.001 for i in range(5)] for j in range(4)]
    b = [[99.5 + i * 0.01 + j * 0.001 for i in range(5)] for j in range(4)]  # -0.5%: significant, too small
    assert compare(1, a, b).verdict == "no significant change"


def test_sweep_is_checked_against_the_workload():
    assert parse_sweep("conns=16,32", WORKLOADS["http_proxy"]) == [16, 32]
    with pytest.raises(HarnessError, match="takes conns=V1,V2"):
        parse_sweep("threads=1", WORKLOADS["http_proxy"])
    with pytest.raises(HarnessError, match="has no sweep"):
        parse_sweep("conns=1", WORKLOADS["tcp_stream"])


def test_sweep_of_named_points():
    assert parse_sweep("backend=userspace", WORKLOADS["nested_rx_pps"]) == ["userspace"]
    with pytest.raises(HarnessError, match="'kvm' is not one of vhost, userspace"):
        parse_sweep("backend=kvm", WORKLOADS["nested_rx_pps"])
