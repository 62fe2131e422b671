"""Statistics of A/B runs whose samples nest: runs inside boots.

Every run of one boot shares that boot's quirks (memory placement, which
vCPU a flow's softirq lands on, hash seeds, where QEMU's threads run), so
runs are not independent samples of a kernel: a boot is.  Here the unit of
comparison is the boot.

    a = [[7.01, 7.05, 6.98], [6.80, 6.84, 6.79], ...]   # one list of runs per boot
    s = compare(point, a, b)     # boot-level test, hierarchical-bootstrap CIs
    s.verdict, s.change_pct, s.p_value, s.between_pct, s.within_pct

- The centre of a side is the median of its boots' medians.
- Its 95% CI comes from a hierarchical bootstrap: resample boots, then runs
  inside each resampled boot.
- The test is Welch's t on the boots' medians (two-sided): with few boots it
  is the test whose false-verdict rate stays at alpha (a run-level test
  would count one boot's quirk n times).
- The verdict needs p < alpha and |change| >= min_effect_pct.
- Spread, in % of the centre: within a boot (pooled SD of runs) and between
  boots (SD of boot medians beyond what the within-boot spread explains).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats as scistats


@dataclasses.dataclass
class PointStats:
    point: object
    median_a: float
    median_b: float
    ci_a: tuple
    ci_b: tuple
    change_pct: float
    p_value: float
    verdict: str            # "faster", "slower", "no significant change"
    boots: tuple            # (boots of A, boots of B)
    within_pct: float       # run-to-run spread inside a boot, % of the centre
    between_pct: float      # boot-to-boot spread, % of the centre


def boot_medians(boots: list[list[float]]) -> list[float]:
    return [float(np.median(runs)) for runs in boots if len(runs)]


def centre(boots: list[list[float]]) -> float:
    return float(np.median(boot_medians(boots)))


def hierarchical_ci(boots: list[list[float]], confidence: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """CI of the median of boot medians: resample boots, then runs in each."""
    arrays = [np.asarray(r, dtype=float) for r in boots if len(r)]
    if not arrays:
        raise ValueError("no samples")
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, len(arrays), (resamples, len(arrays)))
    meds = np.empty(picked.shape)
    for j, runs in enumerate(arrays):  # every resample of boot j at once
        where = picked == j
        draws = rng.choice(runs, (int(where.sum()), len(runs)))
        meds[where] = np.median(draws, axis=1)
    values = np.median(meds, axis=1)
    alpha = (1 - confidence) / 2
    return (float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)))


def spread(boots: list[list[float]]) -> tuple[float, float]:
    """(within_pct, between_pct): a one-way random-effects split of the
    variance, as standard deviations in % of the centre."""
    c = centre(boots)
    runs = [np.asarray(r, dtype=float) for r in boots if len(r) > 1]
    within_var = float(np.mean([r.var(ddof=1) for r in runs])) if runs else 0.0
    n_per_boot = float(np.mean([len(r) for r in boots])) if boots else 1.0
    meds = boot_medians(boots)
    between_var = float(np.var(meds, ddof=1)) - within_var / n_per_boot if len(meds) > 1 else 0.0
    to_pct = 100 / c if c else 0.0
    return math.sqrt(within_var) * to_pct, math.sqrt(max(0.0, between_var)) * to_pct


def boot_test(a: list[list[float]], b: list[list[float]]) -> float:
    """Two-sided p of Student's t on the boot medians when both sides have
    as many boots, Welch's t otherwise (1.0 when either side has fewer than
    two boots, or both sides have no spread at all).  With equal sides the
    pooled t is robust to unequal spreads and keeps 2n - 2 degrees of
    freedom; Welch's fall towards n - 1 when one side is steady (measured:
    a rate-limited side, 3 boots each, -59% came out p = 0.050)."""
    ma, mb = boot_medians(a), boot_medians(b)
    if len(ma) < 2 or len(mb) < 2:
        return 1.0
    if np.var(ma) == 0 and np.var(mb) == 0:
        return 1.0 if np.mean(ma) == np.mean(mb) else 0.0
    return float(scistats.ttest_ind(ma, mb, equal_var=len(ma) == len(mb)).pvalue)


def compare(point, a: list[list[float]], b: list[list[float]], *, higher_is_better=True, alpha=0.05,
            min_effect_pct=2.0, seed: int = 0) -> PointStats:
    """B against A at one sweep point; ``a`` and ``b`` are runs by boot."""
    if not any(len(r) for r in a) or not any(len(r) for r in b):
        raise ValueError(f"no samples at {point}: base {a}, patched {b}")
    med_a, med_b = centre(a), centre(b)
    change = (med_b - med_a) / med_a * 100 if med_a else float("inf")
    p = boot_test(a, b)
    if p < alpha and abs(change) >= min_effect_pct:
        verdict = "faster" if (change > 0) == higher_is_better else "slower"
    else:
        verdict = "no significant change"
    wa, ba = spread(a)
    wb, bb = spread(b)
    return PointStats(point, med_a, med_b, hierarchical_ci(a, seed=seed), hierarchical_ci(b, seed=seed + 1),
                      change, p, verdict, (len(a), len(b)), (wa + wb) / 2, (ba + bb) / 2)


def boots_needed(between_pct: float, within_pct: float, runs_per_boot: int, effect_pct: float,
                 alpha: float = 0.05, power: float = 0.8) -> int:
    """Boots per side for a two-sided test at ``alpha`` to see an
    ``effect_pct`` change with ``power``: n = 2 (z_a/2 + z_b)^2 s^2 / d^2, s
    the SD of a boot's median (between-boot plus within-boot over the runs)."""
    s2 = between_pct ** 2 + within_pct ** 2 / max(1, runs_per_boot)
    z = scistats.norm.ppf(1 - alpha / 2) + scistats.norm.ppf(power)
    return max(2, math.ceil(2 * z * z * s2 / effect_pct ** 2))


def false_verdict_rate(boots: list[list[float]], boots_per_side: int, *, trials: int = 2000, alpha=0.05,
                       min_effect_pct=2.0, seed: int = 0) -> tuple[int, int]:
    """A/A from a pool of boots of one kernel: split random disjoint sets of
    boots into A and B, ``trials`` times; (verdicts that were not "no
    significant change", trials)."""
    if len(boots) < 2 * boots_per_side:
        raise ValueError(f"{len(boots)} boots cannot make two sides of {boots_per_side}")
    rng = np.random.default_rng(seed)
    wrong = 0
    for _ in range(trials):
        order = rng.permutation(len(boots))
        a = [boots[i] for i in order[:boots_per_side]]
        b = [boots[i] for i in order[boots_per_side:2 * boots_per_side]]
        med_a, med_b = centre(a), centre(b)
        change = (med_b - med_a) / med_a * 100 if med_a else 0.0
        if boot_test(a, b) < alpha and abs(change) >= min_effect_pct:
            wrong += 1
    return wrong, trials
