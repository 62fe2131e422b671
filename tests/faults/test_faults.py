"""Fault injection on the harness itself (harness.faults): `harness run`,
`harness up`, a kernel build and a mutant run, each SIGTERMed or
SIGKILLed at seeded random moments (20 points in all); after each, the
next command succeeds and nothing is left: no domain, QEMU, link,
namespace, run directory, registry, temporary file or held lock.

HARNESS_FAULTS_SEED picks other moments (the default is fixed, so a run
is repeatable); the points and what each left are written to the run's
log directory as faults.json."""
import json
import os
import random
import signal
from pathlib import Path

import pytest

from harness import faults
from harness.kernel.build import minimal_kernel

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (guests, links)")]

SEED = int(os.environ.get("HARNESS_FAULTS_SEED", "21"))
POINTS = {"run": 6, "up": 5, "build": 6, "mutants": 3}


@pytest.fixture(scope="module")
def scenarios(harness, tmp_path_factory):
    built = minimal_kernel()
    if built is None:
        pytest.skip("needs the minimal guest kernel (the fake tree's build yields it): tools/setup builds it")
    return faults.scenarios(tmp_path_factory.mktemp("faults"), built)


def draw(name: str, span: float, count: int) -> list[tuple[float, int]]:
    rng = random.Random(f"{SEED}:{name}")
    return [(rng.uniform(0, span), rng.choice((signal.SIGTERM, signal.SIGKILL))) for _ in range(count)]


def test_twenty_fault_points_at_least():
    assert sum(POINTS.values()) >= 20


@pytest.mark.parametrize("name", list(POINTS))
def test_a_killed_command_leaves_nothing_and_the_next_one_works(name, scenarios, harness):
    scenario = scenarios[name]
    points = []
    for at_s, sig in draw(name, scenario.span_s, POINTS[name]):
        point = faults.inject(scenario, at_s, sig)
        if name in ("build", "mutants"):
            cache = Path(scenario.env["HARNESS_CACHE"])
            point.leaks += faults.held_locks(cache) + faults.stray_temp_files(cache)
        points.append(point)
    out = harness.log_dir / "faults"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps([vars(p) for p in points], indent=1))
    bad = [p for p in points if not p.ok]
    assert not bad, "\n".join(f"{p.signal} at {p.at_s}s: exited {p.exited_s}, next rc {p.next_rc}, "
                              f"left after the signal {p.leaks_after_term}, left after the next command {p.leaks}"
                              f"\n  {p.detail}" for p in bad)
