"""Run a pytest selection of this suite on one kernel, in a child process,
and say what happened: passed, failed (by which test), or ran past its
deadline.  What mutants and verify-fix are built on.

    outcome = run_selection(kernel_dir, "threaded_backlog", deadline_s=600, log_dir=d)
    outcome.status, outcome.first_failure, outcome.seconds
"""
from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from ..endpoint import process_group, stop_group
from ..invocation import pytest_argv
from ..util import REPO

# a stopped run gets SIGTERM first (the plugin tears its guests down), SIGKILL
# after this; anything a killed run left is reaped by the next one
STOP_GRACE_S = 30

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TestResult:
    nodeid: str
    outcome: str        # "passed", "failed", "error", "skipped"
    seconds: float
    message: str = ""


@dataclasses.dataclass
class Outcome:
    status: str                     # "passed", "failed", "timeout", "error"
    seconds: float
    tests: list[TestResult]
    detail: str = ""                # what went wrong when status is "error" or "timeout"

    @property
    def failures(self) -> list[TestResult]:
        return [t for t in self.tests if t.outcome in ("failed", "error")]

    @property
    def first_failure(self) -> TestResult | None:
        failures = self.failures
        return failures[0] if failures else None

    def count(self, outcome: str) -> int:
        return sum(1 for t in self.tests if t.outcome == outcome)

    def summary(self) -> str:
        f = self.first_failure
        if self.status == "failed" and f is not None:
            return f"{f.nodeid.split('::')[-1]} ({f.seconds:.0f}s): {_first_line(f.message)}"
        if self.status in ("timeout", "error"):
            return self.detail
        xfailed = f", {self.count('xfailed')} xfailed" if self.count("xfailed") else ""
        return f"{self.count('passed')} passed, {self.count('skipped')} skipped{xfailed}"


def _first_line(text: str) -> str:
    """The line of a failure report that says what failed: a splat's title,
    else pytest's first "E" line, else the first line."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for i, line in enumerate(lines):
        if line.startswith("kernel splat in guest") and i + 1 < len(lines):
            return f"{line} {lines[i + 1]}"[:200]
    for line in lines:
        if line.startswith("E "):
            return line[1:].strip()[:200]
    return lines[0][:200] if lines else ""


def parse_junit(path: Path) -> list[TestResult]:
    """Test results from pytest's JUnit XML, in the order they ran."""
    out = []
    for case in ET.parse(path).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        module = classname.replace(".", "/") + ".py" if classname else ""
        nodeid = f"{module}::{name}" if module else name
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            child = case.find(kind)
            if child is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                if kind == "skipped" and child.get("type") == "pytest.xfail":
                    outcome = "xfailed"  # an expected failure (a known kernel bug), not a skip
                message = (child.get("message") or "") + "\n" + (child.text or "")
                break
        out.append(TestResult(nodeid, outcome, float(case.get("time") or 0), message.strip()))
    return out


def run_selection(kernel, expr: str, *, deadline_s: float, log_dir: Path, accel: str = "auto",
                  stop_at_first_failure: bool = True, extra_args=(), paths=("tests/",)) -> Outcome:
    """``pytest PATHS -k EXPR --kernel KERNEL`` in a child process, killed at
    its deadline; its output, JUnit XML and console logs go to ``log_dir``."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    junit = log_dir / "junit.xml"
    junit.unlink(missing_ok=True)
    argv = pytest_argv(*paths, "-rfE", *(["-x"] if stop_at_first_failure else []), *extra_args, k=expr,
                       kernel=kernel, accel=accel, junit=junit, logs=log_dir / "logs", quiet=True)
    t0 = time.monotonic()
    with open(log_dir / "pytest.out", "w") as out:
        # its own session (a stuck run is killed whole), watching this
        # process: if it dies, even by SIGKILL, the run ends too
        with process_group(argv, grace=STOP_GRACE_S, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL,
                           env={**os.environ, "HARNESS_PARENT_PID": str(os.getpid())}) as child:
            try:
                rc = child.wait(deadline_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                stop_group(child, grace=STOP_GRACE_S)
                rc = child.returncode
    seconds = time.monotonic() - t0
    tests = parse_junit(junit) if junit.is_file() else []
    if timed_out:
        return Outcome("timeout", seconds, tests, f"ran past its {deadline_s:.0f}s deadline")
    if any(t.outcome in ("failed", "error") for t in tests):
        return Outcome("failed", seconds, tests)
    if rc == 0:
        return Outcome("passed", seconds, tests)
    tail = (log_dir / "pytest.out").read_text(errors="replace").strip().splitlines()[-3:]
    what = "no test matched the selection" if rc == 5 else f"pytest exited {rc}: {' | '.join(tail)}"
    return Outcome("error", seconds, tests, what)


