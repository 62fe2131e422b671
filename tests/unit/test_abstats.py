"""Boot-level statistics on synthetic runs-in-boots: the reason they exist
(a run-level test is fooled by boot-to-boot spread) and their calibration."""
import numpy as np
import pytest
from scipy import stats as scistats

from harness.ab.stats import (boot_test, boots_needed, centre, compare, false_verdict_rate, hierarchical_ci,
                                     spread)


def boots(rng, n_boots, runs, centre=100.0, between=3.0, within=1.0):
    """Each boot draws its own offset (between, % SD), runs scatter around it."""
    out = []
    for _ in range(n_boots):
        boot_centre = centre * (1 + rng.normal(0, between / 100))
        out.append(list(boot_centre * (1 + rng.normal(0, within / 100, runs))))
    return out


def test_a_run_level_test_is_fooled_by_boots_and_the_boot_level_test_is_not():
    """A/A with 3% between-boot and 1% within-boot spread, 3 boots of 8 runs
    per side: Mann-Whitney over runs calls far more than 5% of these
    different; the boot-level verdict stays at or under alpha."""
    rng = np.random.default_rng(7)
    trials, run_level, boot_level = 2000, 0, 0
    for _ in range(trials):
        a, b = boots(rng, 3, 8), boots(rng, 3, 8)
        flat_a, flat_b = sum(a, []), sum(b, [])
        p = scistats.mannwhitneyu(flat_a, flat_b).pvalue
        change = (np.median(flat_b) - np.median(flat_a)) / np.median(flat_a) * 100
        run_level += p < 0.05 and abs(change) >= 2
        boot_change = (centre(b) - centre(a)) / centre(a) * 100
        boot_level += boot_test(a, b) < 0.05 and abs(boot_change) >= 2
    assert run_level / trials > 0.15
    # Student's t on equal sides is calibrated at alpha exactly: a finite
    # number of trials scatters around it by its binomial error
    assert boot_level / trials <= 0.05 + 2 * (0.05 * 0.95 / trials) ** 0.5


def test_a_steady_side_does_not_cost_the_test_its_power():
    """The handicap test's shape: B rate-limited (steady), A spread 15%
    between boots, 3 boots each: -59% must be called slower (Welch's t
    lost its degrees of freedom here and said p = 0.050)."""
    a = [[91_980, 88_000, 95_000], [73_120, 70_000, 76_000], [48_170, 50_000, 47_000]]
    b = [[29_930, 29_990, 29_980], [29_980, 29_970, 29_990], [29_990, 29_960, 29_980]]
    assert compare(0, a, b).verdict == "slower"


def test_a_real_difference_is_found_and_sized():
    rng = np.random.default_rng(3)
    a = boots(rng, 5, 6, centre=100, between=1.0)
    b = boots(rng, 5, 6, centre=85, between=1.0)
    s = compare(0, a, b)
    assert s.verdict == "slower" and s.p_value < 0.01
    assert s.change_pct == pytest.approx(-15, abs=2)
    assert s.ci_a[0] <= s.median_a <= s.ci_a[1]
    assert compare(0, a, b, higher_is_better=False).verdict == "faster"


def test_spread_splits_between_and_within():
    rng = np.random.default_rng(11)
    within, between = spread(boots(rng, 60, 10, between=4.0, within=1.0))
    assert within == pytest.approx(1.0, abs=0.2)
    assert between == pytest.approx(4.0, abs=1.0)


def test_hierarchical_ci_widens_with_boot_spread():
    rng = np.random.default_rng(5)
    tight = hierarchical_ci(boots(rng, 6, 6, between=0.5))
    loose = hierarchical_ci(boots(rng, 6, 6, between=5.0))
    assert (loose[1] - loose[0]) > 3 * (tight[1] - tight[0])


def test_pooled_a_a_splits_estimate_the_false_verdict_rate():
    rng = np.random.default_rng(9)
    pool = boots(rng, 24, 5, between=3.0)
    wrong, trials = false_verdict_rate(pool, 4, trials=500)
    assert trials == 500 and wrong / trials <= 0.08
    with pytest.raises(ValueError, match="cannot make two sides"):
        false_verdict_rate(pool[:5], 3)


def test_boots_needed_for_an_effect():
    # boot medians with 3% SD: about 36 boots a side for 2%, 4 for 6%
    assert boots_needed(3.0, 0.0, 5, 2.0) == 36
    assert boots_needed(3.0, 0.0, 5, 6.0) == 4
    assert boots_needed(0.0, 0.0, 5, 2.0) == 2
