"""Catching power: does the suite fail on a kernel that is broken the way a
real bug breaks it?

``run_mutants``: every mutant of a patch (harness.catching.mutants) is built on one
prepared tree (harness.kernel.build.Tree: a mutant recompiles one file and
relinks) and the selection runs on it (harness.catching.selection); each mutant is
killed (by which test, how long), survives, times out or does not build.
Mutants listed as equivalent beside the patch (``<patch>.equivalent``) are
reported, not run.

``verify_fix``: the selection must fail on the kernel without a fix and pass
with it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import statistics
import time
from pathlib import Path

from ..kernel.build import BuildError, Source, Tree
from .mutants import Mutant, Patch, constants_for, mutants, parse_equivalent, targets_patch
from .selection import Outcome, run_selection
from ..util import HarnessError

log = logging.getLogger(__name__)

STATUSES = ("killed", "survived", "timeout", "not_built", "equivalent", "unreached")


class CatchingError(HarnessError):
    pass


@dataclasses.dataclass
class MutantResult:
    id: str
    operator: str
    description: str
    status: str                 # one of STATUSES
    build_s: float = 0.0
    test_s: float = 0.0
    killed_by: str = ""         # the first failing test
    detail: str = ""            # its first message line, the build error, or why equivalent
    diff: str = ""


@dataclasses.dataclass
class MutantReport:
    patch: str
    selection: str
    kernel: str                 # source identity
    reference_s: float          # the unmutated kernel's run of the selection
    results: list[MutantResult]
    wall_s: float
    reference_runs: int = 1     # the unmutated kernel passed the selection this many times in a row
    shard: str = ""             # "K/N" when this is one shard of the mutants (harness merge joins them)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def survivors(self) -> list[MutantResult]:
        return [r for r in self.results if r.status == "survived"]

    def medians(self) -> tuple[float, float]:
        built = [r.build_s for r in self.results if r.status not in ("equivalent", "not_built", "unreached")]
        tested = [r.test_s for r in self.results if r.status in ("killed", "survived", "timeout")]
        return (statistics.median(built) if built else 0.0, statistics.median(tested) if tested else 0.0)

    def table(self) -> str:
        rows = [("mutant", "status", "build", "test", "killed by / why")]
        for r in self.results:
            rows.append((r.id, r.status, f"{r.build_s:.0f}s" if r.build_s else "-",
                         f"{r.test_s:.0f}s" if r.test_s else "-", r.killed_by or r.detail))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=False)) + "  " + row[4] for row in rows]
        totals = ", ".join(f"{self.count(s)} {s}" for s in STATUSES if self.count(s))
        return "\n".join([f"mutants of {self.patch} against -k {self.selection!r}:"] + lines
                         + [f"{len(self.results)} mutants: {totals}"])

    def to_json(self) -> dict:
        build_s, test_s = self.medians()
        return {"patch": self.patch, "selection": self.selection, "kernel": self.kernel,
                "reference_s": self.reference_s, "reference_runs": self.reference_runs, "wall_s": self.wall_s,
                "totals": {s: self.count(s) for s in STATUSES} | {"mutants": len(self.results)},
                "mutant_build_s": build_s, "mutant_test_s": test_s,
                "shard": self.shard, "mutants": [dataclasses.asdict(r) for r in self.results]}

    @classmethod
    def from_json(cls, doc: dict, where: str = "mutants.json") -> MutantReport:
        try:
            return cls(doc["patch"], doc["selection"], doc["kernel"], float(doc["reference_s"]),
                       [MutantResult(**r) for r in doc["mutants"]], float(doc["wall_s"]),
                       reference_runs=int(doc.get("reference_runs", 1)), shard=doc.get("shard", ""))
        except (KeyError, TypeError, ValueError) as e:
            raise CatchingError(f"{where}: expected a `harness mutants` report: {e!r}") from None

    @classmethod
    def merge(cls, reports: list[MutantReport], where: list[str]) -> MutantReport:
        """Shards of one mutant run as one report: the same patch, selection
        and kernel, each mutant once; wall time the longest shard's."""
        first = reports[0]
        for r, w in zip(reports, where, strict=True):
            if (r.patch, r.selection, r.kernel) != (first.patch, first.selection, first.kernel):
                raise CatchingError(f"{w}: mutants of {r.patch} -k {r.selection!r} on {r.kernel}, not of "
                                    f"{first.patch} -k {first.selection!r} on {first.kernel} as {where[0]}")
        seen: dict[str, MutantResult] = {}
        for r, w in zip(reports, where, strict=True):
            for m in r.results:
                if m.id in seen:
                    raise CatchingError(f"{w}: mutant {m.id} is in another shard too")
                seen[m.id] = m
        return cls(first.patch, first.selection, first.kernel, statistics.median(r.reference_s for r in reports),
                   sorted(seen.values(), key=_mutant_order), max(r.wall_s for r in reports),
                   reference_runs=min(r.reference_runs for r in reports))

    def markdown(self) -> str:
        out = [f"# Mutants of `{self.patch}`", "",
               f"Selection `-k {self.selection!r}` on {self.kernel}; the unmutated kernel passed it "
               f"{self.reference_runs} time(s) in a row, in {self.reference_s:.0f}s (median).", "",
               "| mutant | status | killed by / why |", "| --- | --- | --- |"]
        out += [f"| `{r.id}` | {r.status} | {(r.killed_by or r.detail).replace('|', '/')} |" for r in self.results]
        survivors = self.survivors
        out += ["", f"## Survivors ({len(survivors)})", ""]
        if not survivors:
            out.append("None of the mutants built survived; the unreached are below."
                       if self.count("unreached") else
                       "None: every mutant that is not listed as equivalent was killed.")
        for r in survivors:
            out += [f"### `{r.id}` ({r.operator})", "", "```diff", r.diff, "```", ""]
        unreached = [r for r in self.results if r.status == "unreached"]
        if unreached:
            # survivors too, known without a build: no test of the selection ran their line
            out += ["", f"## Unreached ({len(unreached)}): on lines no test ran, so none could kill them", ""]
            out += [f"- `{r.id}`: {r.description}" for r in unreached]
        return "\n".join(out) + "\n"

    def write(self, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / "mutants.json", out_dir / "mutants.md"]
        paths[0].write_text(json.dumps(self.to_json(), indent=1))
        paths[1].write_text(self.markdown())
        return paths


def _mutant_order(m: MutantResult) -> tuple:
    """file.c:LINE:operator ids by file, then line as a number."""
    file, _, rest = m.id.partition(":")
    line, _, op = rest.partition(":")
    return (file, int(line) if line.isdigit() else 0, op)


def shard_of(mutants_found: list[Mutant], built: set[str], shard: tuple[int, int] | None) -> list[Mutant]:
    """The K-th of N shards: every N-th of the mutants that will be built
    (so shards cost about the same), and the rest (equivalent, unreached:
    no build) in the first shard only, so the shards' union is every mutant
    once."""
    if shard is None:
        return mutants_found
    k, n = shard
    work = [m for m in mutants_found if m.id in built]
    mine = {m.id for m in work[k - 1::n]}
    return [m for m in mutants_found if m.id in mine or (k == 1 and m.id not in built)]


def equivalent_file(patch: Path) -> Path:
    return patch.with_name(patch.name + ".equivalent")


def write_targets_patch(targets: list[str], source: Source, out_dir: Path) -> Path:
    """The code ``targets`` (FILE:FUNCTION, FILE:A-B) name in ``source``, as
    a patch that adds it (what mutants are drawn from), written to
    ``out_dir``/targets.patch."""
    patch = out_dir / "targets.patch"
    text = targets_patch(targets, source.files)
    patch.parent.mkdir(parents=True, exist_ok=True)
    patch.write_text(text)
    return patch


def targets_equivalent_file(targets: Path, source: Source) -> Path:
    """Equivalent mutants of a targets file's functions, per source (their
    ids carry line numbers): images/seeds/001.targets on debian-6.12 ->
    images/seeds/001.debian-6.12.equivalent."""
    return targets.with_name(f"{targets.stem}.{source.name}.equivalent")


def load_equivalents(patch: Path, found: list[Mutant], path: Path | None = None) -> dict[str, str]:
    path = path or equivalent_file(patch)
    if not path.is_file():
        return {}
    listed = parse_equivalent(path.read_text())
    unknown = sorted(set(listed) - {m.id for m in found})
    if unknown:
        raise CatchingError(f"{path}: these entries name no mutant of {patch.name} (did the patch change?): "
                            f"{', '.join(unknown)}")
    return listed


def run_mutants(source: Source, patch: Path, *, expr: str, out_dir: Path, base_patches=(), fragments=(),
                minimal: bool = False, deadline_s: float = 900, only=None, include_equivalent: bool = False,
                keep: bool = False, accel: str = "auto", jobs: int | None = None, equivalents_file: Path | None = None,
                reference_runs: int = 1, unreached: dict[str, str] | None = None,
                shard: tuple[int, int] | None = None) -> MutantReport:
    """Build and test every mutant of ``patch`` (or those named in ``only``);
    the equivalent ones are listed beside the patch, or in ``equivalents_file``.
    The unmutated kernel runs the selection ``reference_runs`` times first,
    and must pass every time: a kill on a flaky selection proves nothing.
    The mutants in ``unreached`` (a coverage run's: on lines no test of the
    selection ran) are reported as such, not built."""
    if reference_runs < 1:
        raise CatchingError(f"--reference-runs {reference_runs}: expected 1 or more")
    patch = Path(patch).resolve()
    parsed = Patch.parse(patch.read_text())
    found = mutants(parsed, constants_for(parsed, source.files))
    equivalents = load_equivalents(patch, found, equivalents_file)
    if only:
        unknown = sorted(set(only) - {m.id for m in found})
        if unknown:
            raise CatchingError(f"--mutant {', '.join(unknown)}: no such mutant of {patch.name}; "
                                f"`harness mutants --list` names them")
        found = [m for m in found if m.id in only]
    built = {m.id for m in found if (m.id not in equivalents or include_equivalent)
             and not (unreached and m.id in unreached)}
    found = shard_of(found, built, shard)
    t_start = time.monotonic()
    results: list[MutantResult] = []
    (out_dir / "patches").mkdir(parents=True, exist_ok=True)
    log.info("mutants: %d mutants of %s (%d listed as equivalent); preparing the tree", len(found), patch.name,
             sum(1 for m in found if m.id in equivalents))
    base = [Path(p) for p in base_patches]
    with Tree(source, fragments, jobs=jobs, minimal=minimal) as tree:
        unmutated = tree.build([*base, patch])
        reference_s = []
        for run in range(1, reference_runs + 1):
            log.info("mutants: the unmutated kernel: %s; running the selection on it (%d of %d)", unmutated, run,
                     reference_runs)
            logs = out_dir / ("reference" if reference_runs == 1 else f"reference-{run}")
            reference = run_selection(unmutated, expr, deadline_s=deadline_s, log_dir=logs, accel=accel)
            if reference.status != "passed":
                raise CatchingError(f"the unmutated kernel does not pass -k {expr!r} (run {run} of "
                                    f"{reference_runs}: {reference.status}: {reference.summary()}); logs: {logs}")
            if not reference.count("passed"):
                # every mutant would survive a selection that does not run
                raise CatchingError(f"no test of -k {expr!r} ran on the unmutated kernel ({reference.summary()}): "
                                    f"the skips name what it lacks; logs: {logs}")
            reference_s.append(reference.seconds)
        for n, mutant in enumerate(found, 1):
            result = MutantResult(mutant.id, mutant.operator, mutant.describe(), "", diff=mutant.diff())
            if mutant.id in equivalents and not include_equivalent:
                result.status, result.detail = "equivalent", equivalents[mutant.id]
                results.append(result)
                continue
            if unreached and mutant.id in unreached:
                result.status, result.detail = "unreached", unreached[mutant.id]
                results.append(result)
                log.info("mutants: [%d/%d] %s: unreached, not built", n, len(found), mutant.id)
                continue
            text = mutant.render(parsed)
            slug = mutant.id.replace(":", "-").replace("/", "-")
            (out_dir / "patches" / f"{slug}.patch").write_text(text)
            t0 = time.monotonic()
            try:
                kernel = tree.build([*base, text])
            except BuildError as e:
                result.status, result.build_s = "not_built", time.monotonic() - t0
                result.detail = _first_error(str(e))
                _keep_build_log(str(e), out_dir / slug)
                results.append(result)
                log.info("mutants: [%d/%d] %s: does not build", n, len(found), mutant.id)
                continue
            result.build_s = time.monotonic() - t0
            outcome = run_selection(kernel, expr, deadline_s=deadline_s, log_dir=out_dir / slug, accel=accel)
            _record(result, outcome, equivalents.get(mutant.id))
            results.append(result)
            log.info("mutants: [%d/%d] %s: %s (built %.0fs, tested %.0fs) %s", n, len(found), mutant.id,
                     result.status, result.build_s, result.test_s, result.killed_by or result.detail)
            if not keep:
                shutil.rmtree(kernel, ignore_errors=True)
    return MutantReport(patch.name, expr, source.identity, statistics.median(reference_s), results,
                        time.monotonic() - t_start, reference_runs=reference_runs,
                        shard=f"{shard[0]}/{shard[1]}" if shard else "")


def _first_error(text: str) -> str:
    for line in text.splitlines():
        if "error:" in line:
            return line.strip()[:200]
    return text.splitlines()[-1][:200] if text else ""


def _keep_build_log(error: str, into: Path):
    """The failed build's log moves from the build cache to the mutant's logs."""
    m = re.search(r"full log: (\S+)", error)
    if m and Path(m.group(1)).is_file():
        into.mkdir(parents=True, exist_ok=True)
        shutil.move(m.group(1), into / "build.log")


def _record(result: MutantResult, outcome: Outcome, equivalent_reason: str | None):
    result.test_s = outcome.seconds
    first = outcome.first_failure
    if outcome.status == "failed" and first is not None:
        result.status = "killed"
        result.killed_by = f"{first.nodeid.split('::')[-1]} ({first.seconds:.0f}s)"
        result.detail = outcome.summary()
    elif outcome.status == "passed":
        result.status = "equivalent" if equivalent_reason else "survived"
        result.detail = equivalent_reason or ""
    elif outcome.status == "timeout":
        result.status, result.detail = "timeout", outcome.detail
    else:
        raise CatchingError(f"{result.id}: the selection could not run: {outcome.detail}")


# --- verify-fix -------------------------------------------------------------------

@dataclasses.dataclass
class FixVerdict:
    fix: str
    selection: str
    without: Outcome
    with_fix: Outcome
    kernels: tuple[Path, Path]

    @property
    def verified(self) -> bool:
        return self.without.status == "failed" and self.with_fix.status == "passed"

    def table(self) -> str:
        rows = [("kernel", "result", "tests"),
                ("without the fix", _word(self.without), self.without.summary()),
                ("with the fix", _word(self.with_fix), self.with_fix.summary())]
        widths = [max(len(r[i]) for r in rows) for i in range(2)]
        lines = ["  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2]]) for r in rows]
        verdict = ("verified: the selection fails without the fix and passes with it" if self.verified else
                   "NOT verified: " + ("the selection does not fail without the fix"
                                       if self.without.status != "failed" else "the selection fails with the fix"))
        return "\n".join([f"verify-fix {self.fix} against -k {self.selection!r}:"] + lines + [verdict])


def _word(outcome: Outcome) -> str:
    return {"passed": "PASS", "failed": "FAIL", "timeout": "TIMEOUT", "error": "ERROR"}[outcome.status]


def verify_fix(source: Source, fix: Path, *, expr: str, out_dir: Path, base_patches=(), fragments=(),
               minimal: bool = False, deadline_s: float = 900, accel: str = "auto", jobs: int | None = None,
               every_failure: bool = False) -> FixVerdict:
    """Without the fix the run stops at its first failure (that failure is
    the verdict; ``every_failure`` runs the whole selection there too);
    with the fix it runs whole."""
    fix = Path(fix).resolve()
    base = [Path(p) for p in base_patches]
    with Tree(source, fragments, jobs=jobs, minimal=minimal) as tree:
        without = tree.build(base)
        with_fix = tree.build([*base, fix])
    outcomes = []
    for label, kernel in (("without", without), ("with", with_fix)):
        log.info("verify-fix: running -k %r on the kernel %s the fix", expr, label)
        outcomes.append(run_selection(kernel, expr, deadline_s=deadline_s, log_dir=out_dir / label, accel=accel,
                                      stop_at_first_failure=label == "without" and not every_failure))
    return FixVerdict(fix.name, expr, outcomes[0], outcomes[1], (without, with_fix))
