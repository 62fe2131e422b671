"""Patch coverage: which added lines of a patch a test selection executed,
and which test reached which hunk.

A kernel built with images/kconfig/gcov.config profiles only the objects
the patch touches (``GCOV_PROFILE_<obj>.o := y`` appended to their
directories' Makefiles by profile_patch(), so the rest of the kernel runs
at full speed).  The pytest plugin (``--gcov-dir``) saves each guest's
gcda files after each test and resets the counters; gcov (gcc's own, the
compiler that built the kernel) turns each test's gcda and the build's
gcno into line counts, and those are mapped onto the lines the patch adds
(new-side line numbers: the tree the kernel was built from).

    counts = gcov_lines(gcda_files, gcno_root)        # {"net/core/dev.c": {4930: 17, ...}}
    report = patch_coverage(Patch.parse(text), {"test_a": counts, ...})
    print(report.table())
"""
from __future__ import annotations

import dataclasses
import html
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..kernel.build import GCOV_NOTES
from ..util import REPO, HarnessError
from .mutants import Patch, PatchError

log = logging.getLogger(__name__)

GCOV_CONFIG = REPO / "images" / "kconfig" / "gcov.config"
BOOT = "(boot)"  # what ran before the first test: the boot, the fixtures' setup


class CoverageError(HarnessError):
    pass


# --- which objects to profile ---------------------------------------------------

def profiled_objects(patch: Patch, extra=()) -> list[str]:
    """The C files whose objects get profiled: the patch's, and ``extra``
    (for a patch that changes only headers, the .c files that include them)."""
    found = [f.path for f in patch.files if f.path.endswith(".c")]
    for path in extra:
        if not path.endswith(".c"):
            raise CoverageError(f"--profile {path}: expected a .c file of the tree")
        found.append(path)
    return list(dict.fromkeys(found))


def profile_patch(c_files: list[str], files: Callable[[list[str]], dict[str, bytes]]) -> str:
    """A patch that appends ``GCOV_PROFILE_<stem>.o := y`` to the Makefile
    beside each of ``c_files``, read with ``files`` (the Source's)."""
    if not c_files:
        raise CoverageError("no .c file to profile: the patch changes none (name one with --profile FILE.c)")
    by_dir: dict[str, list[str]] = {}
    for path in c_files:
        by_dir.setdefault(os.path.dirname(path), []).append(Path(path).stem)
    makefiles = {f"{d}/Makefile" if d else "Makefile": stems for d, stems in by_dir.items()}
    texts = files(sorted(makefiles))
    out = []
    for makefile, stems in sorted(makefiles.items()):
        if makefile not in texts:
            raise CoverageError(f"{makefile}: the source has none (a profiled object needs its directory's Makefile)")
        lines = texts[makefile].decode(errors="replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        tail = lines[-3:]
        start = len(lines) - len(tail) + 1
        added = ["# netdev-harness coverage: profile these objects"] + [f"GCOV_PROFILE_{s}.o := y" for s in stems]
        out += [f"--- a/{makefile}", f"+++ b/{makefile}",
                f"@@ -{start},{len(tail)} +{start},{len(tail) + len(added)} @@"]
        out += [" " + line for line in tail] + ["+" + line for line in added]
    return "\n".join(out) + "\n"


# --- gcov's line counts ------------------------------------------------------------

def parse_gcov_json(text: str, *, tree: str = "") -> dict[str, dict[int, int]]:
    """``gcov --json-format --stdout``: {source file: {line: count}}, the
    counts of a line's every instance summed (a header's inline function
    inlined many times).  Paths relative to ``tree`` (the build's) when
    under it, without a leading "./"."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CoverageError(f"gcov's JSON: {e}") from None
    out: dict[str, dict[int, int]] = {}
    try:
        for f in data["files"]:
            path = normal_path(f["file"], tree)
            lines = out.setdefault(path, {})
            for line in f["lines"]:
                n, count = int(line["line_number"]), int(line["count"])
                lines[n] = lines.get(n, 0) + count
    except (KeyError, TypeError, ValueError) as e:
        raise CoverageError(f"gcov's JSON: expected files[].lines[] with line_number and count ({e!r})") from None
    return out


def normal_path(path: str, tree: str = "") -> str:
    if tree and path.startswith(tree.rstrip("/") + "/"):
        path = path[len(tree.rstrip("/")) + 1:]
    while path.startswith("./"):
        path = path[2:]
    return os.path.normpath(path)


def merge_counts(*counts: dict[str, dict[int, int]]) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {}
    for c in counts:
        for path, lines in c.items():
            into = out.setdefault(path, {})
            for n, k in lines.items():
                into[n] = into.get(n, 0) + k
    return out


def gcov_lines(gcda: dict[str, bytes], gcno_root: Path, tree: str = "") -> dict[str, dict[int, int]]:
    """Line counts from one collection's gcda files (paths relative to the
    build tree: ``net/core/dev.gcda``) and the build's gcno files under
    ``gcno_root`` (same relative paths), by gcov."""
    gcov = shutil.which("gcov")
    if gcov is None:
        raise CoverageError("gcov is not installed (Debian: gcc's package has it)")
    counts = []
    with tempfile.TemporaryDirectory(prefix="harness-gcov-") as stage:
        for rel, data in sorted(gcda.items()):
            gcno = gcno_root / (rel[:-len(".gcda")] + ".gcno")
            if not gcno.is_file():
                raise CoverageError(f"{rel}: no {gcno} (the guest's kernel is not the build whose notes were kept)")
            staged = Path(stage) / rel
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.write_bytes(data)
            shutil.copyfile(gcno, staged.with_suffix(".gcno"))
            result = subprocess.run([gcov, "--json-format", "--stdout", str(staged)], cwd=stage,
                                    capture_output=True, text=True)
            if result.returncode != 0 or not result.stdout.strip():
                raise CoverageError(f"gcov {rel}: {result.stderr.strip()[:300] or 'no output'}")
            # one JSON document per line (one per gcda given)
            counts += [parse_gcov_json(line, tree=tree) for line in result.stdout.splitlines() if line.strip()]
    return merge_counts(*counts)


def strip_objtree(gcda: dict[str, bytes], objtree: str) -> dict[str, bytes]:
    """The guest's paths (its gcov directory mirrors the build's absolute
    path) made relative to the build tree; files outside it are an error."""
    prefix = objtree.strip("/") + "/"
    out = {}
    for path, data in gcda.items():
        if not path.startswith(prefix):
            raise CoverageError(f"gcda {path}: not under the build tree {objtree} (another kernel's?)")
        out[path[len(prefix):]] = data
    return out


# --- onto the patch ----------------------------------------------------------------

@dataclasses.dataclass
class Line:
    number: int        # in the patched file
    text: str
    executable: bool   # gcov has a count for it
    count: int         # all tests together
    tests: list[str]   # the tests that ran it


@dataclasses.dataclass
class HunkCoverage:
    path: str
    header: str
    index: int  # of the file's hunks, from 1
    added: list[Line]

    @property
    def executable(self) -> list[Line]:
        return [line for line in self.added if line.executable]

    @property
    def reached(self) -> list[Line]:
        return [line for line in self.added if line.count]

    @property
    def tests(self) -> list[str]:
        return sorted({t for line in self.added for t in line.tests})

    @property
    def name(self) -> str:
        return f"{self.path}#{self.index} ({self.header.split('@@')[1].strip()})"


@dataclasses.dataclass
class CoverageReport:
    patch: str
    selection: str
    hunks: list[HunkCoverage]
    tests: list[str]              # every test collected, in run order
    build_s: float = 0.0
    selection_s: float = 0.0
    status: str = ""    # the selection's on the gcov kernel: passed, failed
    summary: str = ""

    @property
    def lines_added(self) -> int:
        return sum(len(h.added) for h in self.hunks)

    @property
    def lines_executable(self) -> int:
        return sum(len(h.executable) for h in self.hunks)

    @property
    def lines_reached(self) -> int:
        return sum(len(h.reached) for h in self.hunks)

    def unreached(self) -> list[HunkCoverage]:
        return [h for h in self.hunks if h.executable and not h.reached]

    def reached_lines(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for h in self.hunks:
            out.setdefault(h.path, set()).update(line.number for line in h.reached)
        return out

    def by_test(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {t: [] for t in self.tests}
        for h in self.hunks:
            for t in h.tests:
                out.setdefault(t, []).append(h.name)
        return out

    def table(self) -> str:
        rows = [f"coverage of {self.patch}, selection -k {self.selection!r}: {self.lines_reached} of "
                f"{self.lines_executable} executable added lines reached ({self.lines_added} added)",
                f"{'hunk':60} {'reached':>9}  tests"]
        for h in self.hunks:
            names = [_short(t) for t in h.tests]
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            rows.append(f"{h.name[:60]:60} {len(h.reached):>4}/{len(h.executable):<4}  "
                        f"{', '.join(names[:3]) + more if names else '-'}")
        unreached = [line for h in self.hunks for line in h.executable if not line.count]
        if unreached:
            rows.append(f"\nlines no test reached ({len(unreached)}):")
            rows.append(self.annotated(only_unreached=True))
        return "\n".join(rows)

    def annotated(self, *, only_unreached: bool = False) -> str:
        """The patch's added lines, each marked: its count, ``#####`` for an
        executable line no test ran, ``-`` for one gcov has no code for."""
        out = []
        for h in self.hunks:
            if only_unreached and not any(line.executable and not line.count for line in h.added):
                continue
            out.append(f"{h.path} {h.header}")
            for line in h.added:
                mark = f"{line.count:>9}" if line.count else ("    #####" if line.executable else "        -")
                out.append(f"{mark} {line.number:>6} |+{line.text}")
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"# Coverage of `{self.patch}`", "",
               f"Selection `-k {self.selection!r}`: **{self.lines_reached} of {self.lines_executable}** "
               f"executable added lines reached ({self.lines_added} added lines).", "",
               "| hunk | reached | tests |", "| --- | --- | --- |"]
        out += [f"| `{h.name}` | {len(h.reached)}/{len(h.executable)} | "
                f"{', '.join(f'`{_short(t)}`' for t in h.tests) or '-'} |" for h in self.hunks]
        out += ["", "## Per test", ""]
        out += [f"- `{t}`: {', '.join(f'`{n}`' for n in names) or 'no hunk'}" for t, names in self.by_test().items()]
        out += ["", "## The patch's lines", "", "```", self.annotated(), "```", ""]
        return "\n".join(out)

    def to_json(self) -> dict:
        return {"patch": self.patch, "selection": self.selection, "lines_added": self.lines_added,
                "lines_executable": self.lines_executable, "lines_reached": self.lines_reached,
                "build_s": round(self.build_s, 1), "selection_s": round(self.selection_s, 1),
                "status": self.status, "summary": self.summary, "tests": self.tests,
                "hunks": [{"file": h.path, "header": h.header, "index": h.index,
                           "executable": len(h.executable), "reached": len(h.reached), "tests": h.tests,
                           "lines": [dataclasses.asdict(line) for line in h.added]} for h in self.hunks]}

    def html(self) -> str:
        """The patch's added lines as a page: reached lines green, executable
        lines no test ran red, the tests that ran each line on hover."""
        rows = []
        for h in self.hunks:
            rows.append(f'<tr class="hunk"><td colspan="3">{html.escape(h.path)} {html.escape(h.header)} '
                        f'({len(h.reached)}/{len(h.executable)} reached)</td></tr>')
            for line in h.added:
                kind = "reached" if line.count else ("unreached" if line.executable else "nocode")
                count = str(line.count) if line.count else ("#####" if line.executable else "")
                title = html.escape(", ".join(_short(t) for t in line.tests), quote=True)
                rows.append(f'<tr class="{kind}" title="{title}"><td class="n">{count}</td>'
                            f'<td class="n">{line.number}</td><td><pre>+{html.escape(line.text)}</pre></td></tr>')
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Coverage of "
                f"{html.escape(self.patch)}</title>\n<style>{_CSS}</style></head><body>\n"
                f"<h1>Coverage of {html.escape(self.patch)}</h1>\n<p>Selection <code>-k "
                f"{html.escape(repr(self.selection))}</code>: {self.lines_reached} of {self.lines_executable} "
                f"executable added lines reached ({self.lines_added} added). Hover a line for the tests that ran it; "
                f"<a href=\"files/index.html\">the whole files</a> (gcovr).</p>\n"
                f"<table>\n" + "\n".join(rows) + "\n</table></body></html>\n")

    @classmethod
    def from_json_file(cls, path: Path) -> CoverageReport:
        """A report to_json() wrote (coverage.json)."""
        try:
            data = json.loads(path.read_text())
            hunks = [HunkCoverage(h["file"], h["header"], h["index"], [Line(**line) for line in h["lines"]])
                     for h in data["hunks"]]
            return cls(data["patch"], data["selection"], hunks, data["tests"], data["build_s"],
                       data["selection_s"], data.get("status", ""), data.get("summary", ""))
        except OSError as e:
            raise CoverageError(f"{path}: {e.strerror}") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CoverageError(f"{path}: not a coverage.json of `harness coverage` ({e!r})") from None

    def write(self, out: Path) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        md, js, page = out / "coverage.md", out / "coverage.json", out / "coverage.html"
        md.write_text(self.markdown())
        js.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        page.write_text(self.html())
        return [md, js, page]


_CSS = ("body{font-family:sans-serif} table{border-collapse:collapse} pre{margin:0} td{padding:0 .5em} "
        "td.n{text-align:right;font-family:monospace;color:#555} tr.hunk td{background:#ddd;padding-top:.6em} "
        "tr.reached{background:#dfd} tr.unreached{background:#fcc} tr.nocode{color:#777}")


def _short(nodeid: str) -> str:
    return nodeid.rsplit("::", 1)[-1]


def patch_coverage(patch: Patch, per_test: dict[str, dict[str, dict[int, int]]], *, name: str = "the patch",
                   selection: str = "") -> CoverageReport:
    """Each added line of ``patch`` (code files) with its count per test."""
    hunks = []
    for f in patch.files:
        if not f.is_code:
            continue
        for i, hunk in enumerate(f.hunks, 1):
            lines = []
            for _, number, text, added in hunk.new_side():
                if not added:
                    continue
                counts = {t: c[f.path][number] for t, c in per_test.items()
                          if f.path in c and number in c[f.path]}
                lines.append(Line(number, text, bool(counts), sum(counts.values()),
                                  sorted(t for t, k in counts.items() if k)))
            if lines:
                hunks.append(HunkCoverage(f.path, hunk.header, i, lines))
    if not hunks:
        raise CoverageError(f"{name}: adds no line to a code file")
    return CoverageReport(name, selection, hunks, list(per_test))


# --- a collection directory: what the plugin saved ----------------------------------

def read_collections(gcov_dir: Path) -> list[tuple[str, dict[str, bytes]]]:
    """``--gcov-dir``'s contents, in run order: (test nodeid, {gcda path:
    bytes}) per collection (index.json names them)."""
    index = gcov_dir / "index.json"
    if not index.is_file():
        raise CoverageError(f"{index}: missing (no test ran with --gcov-dir, or its kernel has no gcov)")
    out = []
    for entry in json.loads(index.read_text()):
        where = gcov_dir / entry["dir"]
        files = {str(p.relative_to(where)): p.read_bytes() for p in sorted(where.rglob("*.gcda"))}
        out.append((entry["test"], files))
    return out


def coverage_of_run(patch: Patch, gcov_dir: Path, gcno_root: Path, objtree: str, *, name: str,
                    selection: str) -> CoverageReport:
    per_test: dict[str, dict[str, dict[int, int]]] = {}
    for test, files in read_collections(gcov_dir):
        counts = gcov_lines(strip_objtree(files, objtree), gcno_root)
        per_test[test] = merge_counts(per_test.get(test, {}), counts)
    return patch_coverage(patch, per_test, name=name, selection=selection)


def gcovr_pages(gcov_dir: Path, gcno_root: Path, objtree: str, files: list[str], out: Path) -> Path:
    """gcovr's annotated pages of ``files`` (whole files, every test's
    counts merged: one tracefile per collection, then merged), sources read
    from the build tree ``objtree``.  Returns the index page."""
    out.mkdir(parents=True, exist_ok=True)
    traces = out / "tracefiles"
    traces.mkdir(exist_ok=True)
    # gcovr matches filters against absolute paths
    only = ["--filter", "|".join(re.escape(f"{objtree.rstrip('/')}/{f}") + "$" for f in files)]
    # the kernel's counters are not atomic: concurrent CPUs can leave a
    # block's count below its successors' (gcc bug 68080), which gcov reads
    # as negative hits
    gcovr = [sys.executable, "-m", "gcovr", "--root", objtree, *only,
             "--gcov-ignore-parse-errors", "negative_hits.warn_once_per_file"]
    for n, (_, collected) in enumerate(read_collections(gcov_dir), 1):
        with tempfile.TemporaryDirectory(prefix="harness-gcovr-") as stage:
            for rel, data in strip_objtree(collected, objtree).items():
                (Path(stage) / rel).parent.mkdir(parents=True, exist_ok=True)
                (Path(stage) / rel).write_bytes(data)
                shutil.copyfile(gcno_root / (rel[:-len(".gcda")] + ".gcno"), Path(stage) / (rel[:-5] + ".gcno"))
            _gcovr([*gcovr, "--json", str(traces / f"{n:04d}.json"), stage])
    index = out / "index.html"
    _gcovr([*gcovr, *[a for t in sorted(traces.glob("*.json")) for a in ("--add-tracefile", str(t))],
            "--html-details", str(index)])
    return index


def _gcovr(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise CoverageError(f"gcovr: {(result.stderr or result.stdout).strip()[-300:]}")


def build_notes(kernel: Path, c_files: list[str]) -> Path:
    """The gcno files a gcov build kept with its output (kernel/gcno), one
    per profiled object."""
    notes = kernel / GCOV_NOTES
    for c in c_files:
        if not (notes / (c[:-2] + ".gcno")).is_file():
            raise CoverageError(f"{c}: the build {kernel} kept no {c[:-2]}.gcno (a gcov build from before builds "
                                f"kept their notes: remove that directory; or the object is not built)")
    return notes


def run_coverage(source, patch_path: Path, *, expr: str, out_dir: Path, base_patches=(), fragments=(),
                 minimal: bool = False, profile=(), deadline_s: float = 1800, accel: str = "auto",
                 jobs: int | None = None, patch_name: str | None = None) -> CoverageReport:
    """Build ``patch_path`` on ``source`` with its objects profiled, run the
    selection (every test, not stopping at a failure), and map each test's
    counts onto the patch."""
    from ..kernel.build import BuildError, Tree
    from .selection import run_selection
    text = Path(patch_path).read_text()
    try:
        parsed = Patch.parse(text)
    except PatchError as e:
        raise CoverageError(f"{patch_path}: {e}") from None
    c_files = profiled_objects(parsed, profile)
    profiling = profile_patch(c_files, source.files)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "profile.patch").write_text(profiling)
    t0 = time.monotonic()
    with Tree(source, [GCOV_CONFIG, *fragments], jobs=jobs, minimal=minimal) as tree:
        try:
            kernel = tree.build([*[Path(p) for p in base_patches], Path(patch_path), profiling])
        except BuildError as e:
            raise CoverageError(f"the gcov build: {e}") from None
        build_s = time.monotonic() - t0
        notes = build_notes(kernel, c_files)
        objtree = str(tree.work)
    log.info("coverage: built %s in %.0fs; running -k %r with --gcov-dir", kernel, build_s, expr)
    gcov_dir = out_dir / "gcda"
    outcome = run_selection(kernel, expr, deadline_s=deadline_s, log_dir=out_dir / "run", accel=accel,
                            stop_at_first_failure=False, extra_args=("--gcov-dir", str(gcov_dir)))
    if outcome.status not in ("passed", "failed"):
        raise CoverageError(f"the selection on the gcov kernel: {outcome.status}: {outcome.summary()}; "
                            f"logs: {out_dir / 'run'}")
    report = coverage_of_run(parsed, gcov_dir, notes, objtree, name=patch_name or Path(patch_path).name,
                             selection=expr)
    report.build_s, report.selection_s = build_s, outcome.seconds
    try:
        gcovr_pages(gcov_dir, notes, objtree, sorted({h.path for h in report.hunks}), out_dir / "files")
    except CoverageError as e:  # the page is extra: the report stands without it
        log.warning("coverage: no whole-file pages: %s", e)
    report.status, report.summary = outcome.status, outcome.summary()
    return report


def unreached_mutants(report: CoverageReport, mutants) -> dict[str, str]:
    """The mutants whose statement has code gcov counted and none of it ran
    in any test (by id, with why): this selection cannot kill them, so
    their build is skipped.  A statement gcov has no code for (folded into
    its neighbours by the compiler) is not judged: it is built."""
    reached = report.reached_lines()
    executable = {(h.path, line.number) for h in report.hunks for line in h.executable}
    out = {}
    for m in mutants:
        span = range(m.line_no, m.line_no + m.statement.end[0] - m.statement.start[0] + 1)
        counted = [n for n in span if (m.file, n) in executable]
        if counted and not any(n in reached.get(m.file, set()) for n in counted):
            out[m.id] = f"unreached: no test of -k {report.selection!r} ran {m.file}:{m.line_no}"
    return out


_NODEID = re.compile(r"[^A-Za-z0-9_.-]+")


def slug(nodeid: str) -> str:
    return _NODEID.sub("_", nodeid)[-120:]
