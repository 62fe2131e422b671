"""A/B runs: a base and a patched kernel, the same workload, compared with
statistics a reviewer can trust.

    report = run_ab(WORKLOADS["http_proxy"], Side("base", k1), Side("patched", k2), boots=3, runs=5)
    print(report.table()); report.write(out_dir)   # JSON with every sample, PNG per metric

Each side is measured over several independent boots, each a fresh lab of
the workload's topology, with runs nested inside a boot; boots of A and B
alternate A B B A A B ... so that a slow drift of the host falls on both
sides alike, and each boot's first ``warmup`` runs are discarded.  The
statistics compare boots, not runs (harness.ab.stats): one boot's quirks
are not the kernel's.  Per sweep point: the median of boot medians with a
hierarchical-bootstrap 95% CI, the change of B against A, Student's (equal boots) or Welch's p on the
boot medians, a verdict that needs both p < alpha and a change of at least
min_effect_pct, and the spread within and between boots.
"""
from __future__ import annotations

import dataclasses
import logging
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from .stats import PointStats, compare
from ..kernel.kernel import Kernel
from ..lab.lab import Lab
from ..util import REPO, HarnessError

ROOT = REPO


log = logging.getLogger(__name__)


class ABError(HarnessError):
    pass


@dataclasses.dataclass
class Side:
    label: str
    kernel: Kernel
    options: dict = dataclasses.field(default_factory=dict)  # passed to the workload's sample()


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
    samples: dict           # point -> {"base": [[runs of boot 1], ...], "patched": [...]}
    stats: list[PointStats]
    environment: dict
    wall_s: float
    workload_s: float       # the workloads' own time, summed

    @property
    def overhead_pct(self) -> float:
        return (self.wall_s - self.workload_s) / self.workload_s * 100

    def assert_not_slower(self, max_pct: float) -> None:
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
                ["verdict"] + [s.verdict for s in self.stats],
                ["spread"] + [f"boots {s.between_pct:.1f}%, runs {s.within_pct:.1f}%" for s in self.stats]]
        widths = [max(len(r[i]) for r in rows + [[""] + cols]) for i in range(len(cols) + 1)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()  # noqa: E731
        first = next(iter(self.samples.values()))["base"]
        head = (f"{self.workload}: {self.metric}, median of boot medians [95% CI], {len(first)} boots x "
                f"{len(first[0]) if first else 0} runs per side")
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
        """Per sweep point, the two kernels side by side: one box per side
        over every run, each boot's runs in their own colour."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        labels = (f"{self.base.label}\n{self.base.kernel.release}",
                  f"{self.patched.label}\n{self.patched.kernel.release}")
        fig, axes = plt.subplots(1, len(self.stats), figsize=(3.2 * len(self.stats) + 1, 4.2), squeeze=False)
        for ax, s in zip(axes[0], self.stats, strict=False):
            for x, side in enumerate(("base", "patched")):
                boots = self.samples[s.point][side]
                ax.boxplot([sum(boots, [])], positions=[x], widths=0.6, patch_artist=True,
                           boxprops={"facecolor": ("#9ecae1", "#fdae6b")[x]})
                for k, runs in enumerate(boots):
                    ax.scatter([x + (k - (len(boots) - 1) / 2) * 0.08] * len(runs), runs, s=9, zorder=3,
                               color=plt.cm.tab10(k % 10))
            ax.set_xticks([0, 1], labels, fontsize=8)
            ax.set_title(f"{self._col(s.point)}: {s.change_pct:+.1f}%, {s.verdict}", fontsize=9)
        axes[0][0].set_ylabel(self.metric)
        fig.suptitle(f"{self.workload} ({self.metric}); dots: runs, one colour per boot", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def environment(base: Side, patched: Side, accel: str) -> dict:
    def version(argv: list[str]) -> str | None:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return None
    from ..vm.guest import libvirt_conn
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


def measure_boot(workload, side: Side, topology: Path, *, runs: int, warmup: int, sweep: list, accel: str,
                  log_dir: Path, pin: list[int] | None = None) -> tuple[dict, float]:
    """One boot: a fresh lab of ``topology`` on the side's kernel, ``warmup``
    discarded runs, then ``runs`` measured ones at every sweep point.
    Returns ({point: [values]}, seconds the workload itself ran)."""
    lab = Lab.from_yaml(topology, kernel=side.kernel, accel=accel, log_dir=log_dir)
    got: dict = {p: [] for p in sweep}
    workload_s = 0.0
    try:
        lab.up()
        workload.setup(lab)
        if pin:
            for guest in lab.guests.values():
                guest.pin_vcpus(pin)
        for r in range(warmup + runs):
            for point in sweep:
                value, seconds = workload.sample(lab, point, **side.options)
                if r >= warmup:
                    got[point].append(value)
                    workload_s += seconds
                log.info(f"ab:   {'warm-up' if r < warmup else f'run {r - warmup + 1}/{runs}'} "
                         f"{workload.sweep_name + '=' + str(point) if workload.sweep_name else ''}"
                         f" {value:.4g} {workload.metric}")
    finally:
        lab.down()
    return got, workload_s


def run_ab(workload, base: Side, patched: Side, *, boots: int = 3, runs: int = 5, warmup: int = 1, sweep=None,
           topology=None, accel: str = "tcg", log_dir=None, pin: list[int] | None = None,
           alpha: float = 0.05, min_effect_pct: float = 2.0) -> Report:
    """``boots`` fresh labs per side, alternating sides, each measured
    ``runs`` times after ``warmup`` discarded runs; see the module doc."""
    if boots < 2:
        raise ABError(f"--boots {boots}: at least 2 boots per side are needed to compare boots")
    if runs < 1:
        raise ABError(f"--runs {runs}: at least one run per boot")
    sweep = list(sweep) if sweep else list(workload.default_sweep)
    topo = Path(topology) if topology else ROOT / "topologies" / f"{workload.topology}.yaml"
    log_dir = Path(log_dir) if log_dir else Path(os.environ.get("TMPDIR", "/tmp"))
    samples: dict = {p: {"base": [], "patched": []} for p in sweep}
    t_start, workload_s = time.monotonic(), 0.0
    for i in range(boots):
        # A B, B A, A B ...: a linear drift of the host cancels out
        for side in ((base, patched) if i % 2 == 0 else (patched, base)):
            log.info(f"ab: boot {i + 1}/{boots} of {side.label} ({side.kernel.release}): bringing up {topo.name}")
            got, seconds = measure_boot(workload, side, topo, runs=runs, warmup=warmup, sweep=sweep, accel=accel,
                                        log_dir=log_dir / side.label / f"boot{i + 1}", pin=pin)
            workload_s += seconds
            for point in sweep:
                samples[point]["base" if side is base else "patched"].append(got[point])
    wall = time.monotonic() - t_start
    stats = [compare(p, samples[p]["base"], samples[p]["patched"], higher_is_better=workload.higher_is_better,
                     alpha=alpha, min_effect_pct=min_effect_pct) for p in sweep]
    return Report(workload.name, workload.metric, workload.sweep_name, base, patched, samples, stats,
                  environment(base, patched, accel), wall, workload_s)
