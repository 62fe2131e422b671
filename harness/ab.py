"""A/B runs: a base and a patched kernel, the same workload, interleaved,
compared with statistics a reviewer can trust.

    report = run_ab(WORKLOADS["http_proxy"], Side("base", k1), Side("patched", k2), runs=10)
    print(report.table()); report.write(out_dir)   # JSON with every sample, PNG per metric

Both labs are up for the whole run; the side not measuring is paused (its
vCPUs stop, so it takes no host CPU).  Samples alternate A B B A A B ...
so that a slow drift of the host affects both sides alike; warm-up rounds
are discarded.  Per sweep point: medians, bootstrap 95% confidence
intervals, the change of B against A, a Mann-Whitney U p-value, and a
verdict that needs both p < alpha and a change of at least min_effect_pct.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats as scistats

from .kernel import Kernel
from .lab import Lab
from .util import HarnessError

ROOT = Path(__file__).resolve().parent.parent


class ABError(HarnessError):
    pass


@dataclasses.dataclass
class Side:
    label: str
    kernel: Kernel
    options: dict = dataclasses.field(default_factory=dict)  # passed to the workload's sample()


@dataclasses.dataclass
class PointStats:
    point: object
    median_a: float
    median_b: float
    ci_a: tuple
    ci_b: tuple
    change_pct: float
    p_value: float
    verdict: str  # "faster", "slower", "no significant change"


def bootstrap_ci(samples, confidence=0.95, seed=0) -> tuple[float, float]:
    if len(samples) < 2 or len(set(samples)) == 1:
        return (float(min(samples)), float(max(samples)))
    res = scistats.bootstrap((np.asarray(samples, dtype=float),), np.median, confidence_level=confidence,
                             n_resamples=2000, method="percentile", random_state=seed)
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def compare(point, a: list[float], b: list[float], *, higher_is_better=True, alpha=0.05,
            min_effect_pct=2.0) -> PointStats:
    """B against A at one sweep point."""
    if not a or not b:
        raise ABError(f"no samples at {point}: base {len(a)}, patched {len(b)}")
    med_a, med_b = float(np.median(a)), float(np.median(b))
    change = (med_b - med_a) / med_a * 100 if med_a else float("inf")
    p = float(scistats.mannwhitneyu(a, b, alternative="two-sided").pvalue) if len(a) > 1 and len(b) > 1 else 1.0
    if p < alpha and abs(change) >= min_effect_pct:
        verdict = "faster" if (change > 0) == higher_is_better else "slower"
    else:
        verdict = "no significant change"
    return PointStats(point, med_a, med_b, bootstrap_ci(a), bootstrap_ci(b), change, p, verdict)


def _fmt(v: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return f"{v:.3g}"


@dataclasses.dataclass
class Report:
    workload: str
    metric: str
    sweep_name: str
    base: Side
    patched: Side
    samples: dict           # point -> {"base": [...], "patched": [...]}
    stats: list[PointStats]
    environment: dict
    wall_s: float
    workload_s: float       # the workloads' own time, summed

    @property
    def overhead_pct(self) -> float:
        return (self.wall_s - self.workload_s) / self.workload_s * 100

    def assert_not_slower(self, max_pct: float):
        """Fail when B is significantly slower than A by more than ``max_pct``
        at any sweep point (for tests: the ``ab`` fixture's report)."""
        worse = [s for s in self.stats if s.verdict == "slower" and abs(s.change_pct) > max_pct]
        if worse:
            raise AssertionError(f"{self.patched.label} is significantly slower than {self.base.label} "
                                 f"by more than {max_pct}%:\n{self.table()}")

    def _col(self, point) -> str:
        return f"{self.sweep_name}={point}" if self.sweep_name else "value"

    def table(self) -> str:
        """Shaped like the seeds' tables: rows base and patched, columns the sweep."""
        cols = [self._col(s.point) for s in self.stats]
        rows = [[self.base.label] + [f"{_fmt(s.median_a)} [{_fmt(s.ci_a[0])}, {_fmt(s.ci_a[1])}]" for s in self.stats],
                [self.patched.label] + [f"{_fmt(s.median_b)} [{_fmt(s.ci_b[0])}, {_fmt(s.ci_b[1])}]"
                                        for s in self.stats],
                ["change"] + [f"{s.change_pct:+.1f}% (p={s.p_value:.3f})" for s in self.stats],
                ["verdict"] + [s.verdict for s in self.stats]]
        widths = [max(len(r[i]) for r in rows + [[""] + cols]) for i in range(len(cols) + 1)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        runs = len(next(iter(self.samples.values()))["base"])
        head = f"{self.workload}: {self.metric}, median [95% CI] of {runs} runs per side"
        return "\n".join([head, line([""] + cols)] + [line(r) for r in rows])

    def to_json(self) -> dict:
        return {"workload": self.workload, "metric": self.metric, "sweep": self.sweep_name,
                "base": {"label": self.base.label, "kernel": str(self.base.kernel.image),
                         "options": self.base.options},
                "patched": {"label": self.patched.label, "kernel": str(self.patched.kernel.image),
                            "options": self.patched.options},
                "points": [{"point": s.point, "samples": self.samples[s.point], **dataclasses.asdict(s)}
                           for s in self.stats],
                "environment": self.environment, "wall_s": self.wall_s, "workload_s": self.workload_s}

    def write(self, out_dir) -> list[Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = out / f"{self.workload}.json"
        data.write_text(json.dumps(self.to_json(), indent=1, default=str))
        return [data, self.plot(out / f"{self.workload}.png")]

    def plot(self, path: Path) -> Path:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(max(4, 2.2 * len(self.stats)), 4))
        data, positions, labels = [], [], []
        for i, s in enumerate(self.stats):
            for j, side in enumerate(("base", "patched")):
                data.append(self.samples[s.point][side])
                positions.append(i * 3 + j)
            labels.append(self._col(s.point))
        box = ax.boxplot(data, positions=positions, widths=0.8, patch_artist=True)
        for k, patch in enumerate(box["boxes"]):
            patch.set_facecolor("#9ecae1" if k % 2 == 0 else "#fdae6b")
        for pos, values in zip(positions, data):
            ax.scatter([pos] * len(values), values, s=8, color="black", zorder=3)
        ax.set_xticks([i * 3 + 0.5 for i in range(len(self.stats))], labels)
        ax.set_ylabel(self.metric)
        ax.set_title(f"{self.workload}: {self.base.label} (blue) vs {self.patched.label} (orange)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def environment(base: Side, patched: Side, accel: str) -> dict:
    def version(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return None
    from .guest import libvirt_conn
    lib = libvirt_conn().getLibVersion()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None)
    return {
        "kernels": {side.label: {"release": side.kernel.release, "image": str(side.kernel.image),
                                 "identity": side.kernel.identity,
                                 "config_sha256": _sha(side.kernel.config_path)} for side in (base, patched)},
        "qemu": version(["qemu-system-x86_64", "--version"]),
        "libvirt": f"{lib // 1000000}.{lib // 1000 % 1000}.{lib % 1000}",
        "accel": accel, "cpu_model": cpu, "host_cpus": os.cpu_count(), "host_kernel": platform.release(),
        "command_line": sys.argv,
    }


def _sha(path) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None


def run_ab(workload, base: Side, patched: Side, *, runs: int = 10, warmup: int = 1, sweep=None,
           topology=None, accel: str = "tcg", log_dir=None, pin: list[int] | None = None,
           alpha: float = 0.05, min_effect_pct: float = 2.0, progress=print) -> Report:
    """Interleaved runs of ``workload`` on a lab per kernel; see the module doc."""
    if runs < 2:
        raise ABError(f"--runs {runs}: at least 2 runs per side are needed for a comparison")
    sweep = list(sweep) if sweep else list(workload.default_sweep)
    topo = Path(topology) if topology else ROOT / "topologies" / f"{workload.topology}.yaml"
    log_dir = Path(log_dir) if log_dir else Path(os.environ.get("TMPDIR", "/tmp"))
    samples = {p: {"base": [], "patched": []} for p in sweep}
    labs = {}
    t_start, workload_s = time.monotonic(), 0.0
    try:
        for side in (base, patched):
            progress(f"ab: bringing up {topo.name} on {side.label} ({side.kernel.release})")
            lab = labs[side.label] = Lab.from_yaml(topo, kernel=side.kernel, accel=accel,
                                                   log_dir=log_dir / side.label)
            lab.up()
            workload.setup(lab)
            if pin:
                for guest in lab.guests.values():
                    guest.pin_vcpus(pin)
            _pause(lab)
        t_start = time.monotonic()
        for i in range(warmup + runs):
            # A B, B A, A B ...: a linear drift of the host cancels out
            order = (base, patched) if i % 2 == 0 else (patched, base)
            for side in order:
                lab = labs[side.label]
                _resume(lab)
                try:
                    for point in sweep:
                        value, seconds = workload.sample(lab, point, **side.options)
                        if i >= warmup:
                            samples[point]["base" if side is base else "patched"].append(value)
                            workload_s += seconds
                        progress(f"ab: {'warm-up' if i < warmup else f'run {i - warmup + 1}/{runs}'} "
                                 f"{side.label} {workload.sweep_name + '=' + str(point) if workload.sweep_name else ''}"
                                 f" {value:.4g} {workload.metric}")
                finally:
                    _pause(lab)
        wall = time.monotonic() - t_start
        # warm-up rounds are not the workload's time either
        wall -= wall * warmup / (warmup + runs)
    finally:
        for lab in labs.values():
            _resume(lab)
            lab.down()
    stats = [compare(p, samples[p]["base"], samples[p]["patched"], higher_is_better=workload.higher_is_better,
                     alpha=alpha, min_effect_pct=min_effect_pct) for p in sweep]
    return Report(workload.name, workload.metric, workload.sweep_name, base, patched, samples, stats,
                  environment(base, patched, accel), wall, workload_s)


def _pause(lab):
    for guest in lab.guests.values():
        guest.pause()


def _resume(lab):
    for guest in lab.guests.values():
        guest.resume()
