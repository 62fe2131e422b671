"""Kernel selftests as pytest items: ``pytest --ksft net -k rps``.

One item per ``collection:test`` of the installed ``kselftest-list.txt``,
so ``-k`` selects as it does for the behaviour suite.  The selected items
run in a pool of guests (harness.ksft.runner) started by the first of
them; each item then reports its own result: a failure with the test's
output and failed subtests, a skip with the test's own reason, a flake
(failed, then passed in a fresh guest) as FLAKY.  Subtest counts and
attempts go to the item's JUnit properties.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .build import install, source_for
from .collection import Selftest, read_list, select
from .runner import GUEST_MEMORY_MB, GUEST_VCPUS, Pool, default_jobs

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr, TracebackStyle

FLAKY = ("ksft", "flaky")


def addoptions(group: pytest.OptionGroup) -> None:
    group.addoption("--ksft", metavar="TARGETS",
                    help="run these kernel selftest collections (comma-separated: net,net/forwarding) "
                         "instead of the files in tests/")
    group.addoption("--ksft-source", metavar="DIR|debian:SERIES", default=None,
                    help="where the selftests come from: a kernel tree, or Debian's linux-source "
                         "(default: the --kernel tree when it is one, else debian:6.12)")
    group.addoption("--ksft-jobs", type=int, default=None, metavar="N",
                    help="guests running selftests at once (default: from host CPUs and memory)")
    group.addoption("--ksft-retries", type=int, default=1, metavar="N",
                    help="run a failed selftest again in a fresh guest up to N times (default 1)")


class KsftItem(pytest.Item):
    def __init__(self, *, test: Selftest, runs: KsftRuns, **kw):
        super().__init__(**kw)
        self.test, self.runs = test, runs
        self.add_marker(pytest.mark.ksft)

    def runtest(self) -> None:
        result = self.runs.pool_for(self).result(self.test)
        for n, attempt in enumerate(result.attempts, 1):
            counts: dict[str, int] = {}
            for sub in attempt.subtests:
                counts[sub["outcome"]] = counts.get(sub["outcome"], 0) + 1
            self.user_properties.append((f"attempt{n}", f"{attempt.outcome} in {attempt.seconds:.1f}s on "
                                                        f"{attempt.guest}; subtests {counts or 'none'}"))
        last = result.attempts[-1]
        if result.outcome == "flaky":
            self.user_properties.append(FLAKY)
            return
        if result.outcome == "skip":
            pytest.skip(f"{self.test.id}: {last.reason}")
        if result.outcome == "xfail":
            pytest.xfail(f"{self.test.id}: {last.reason}")
        if result.outcome != "pass":
            raise KsftFailed(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: TracebackStyle | None = None) -> str | TerminalRepr:
        if isinstance(excinfo.value, KsftFailed):
            return excinfo.value.describe()
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[os.PathLike[str] | str, int | None, str]:
        return self.path, None, self.name


class KsftFailed(Exception):
    def __init__(self, result):
        super().__init__(result.test.id)
        self.result = result

    def describe(self) -> str:
        parts = []
        for n, a in enumerate(self.result.attempts, 1):
            failed = [f"  not ok {s['name']}" + (f" # {s['reason']}" if s["reason"] else "")
                      for s in a.subtests if s["outcome"] == "fail"]
            parts.append(f"attempt {n} on {a.guest}: {a.outcome} after {a.seconds:.1f}s: {a.reason}")
            parts += failed
            parts += [f"kernel {s['kind']}:\n{s['text']}" for s in a.splats]
            tail = a.output.splitlines()[-40:]
            if tail:
                parts.append("--- output (last 40 lines) ---\n" + "\n".join(tail))
        return "\n".join(parts)


class KsftRuns:
    """The session's selftests: the install, the items, the pool."""

    def __init__(self, config, harness):
        self.config, self.harness = config, harness
        self.targets = [t.strip() for t in config.getoption("ksft").split(",") if t.strip()]
        self.pool: Pool | None = None
        self.installed = None

    def source_spec(self) -> str:
        spec = self.config.getoption("ksft_source")
        if spec:
            return spec
        kernel_arg = self.config.getoption("kernel")
        if kernel_arg and (Path(kernel_arg).expanduser() / "tools" / "testing" / "selftests").is_dir():
            return kernel_arg
        return "debian:6.12"

    def items(self, session) -> list[pytest.Item]:
        self.installed = install(source_for(self.source_spec()), self.targets)
        tests = select(read_list(self.installed.list_text, str(self.installed.path / "kselftest-list.txt")),
                       self.targets)
        return [KsftItem.from_parent(session, name=t.id, test=t, runs=self) for t in tests]

    def pool_for(self, item: KsftItem) -> Pool:
        if self.pool is None:
            assert self.installed is not None  # items() installed the selftests first
            harness = self.harness
            harness.ensure_ready()
            jobs = self.config.getoption("ksft_jobs") or default_jobs(GUEST_VCPUS, GUEST_MEMORY_MB, os.cpu_count() or 1,
                                                                       _available_mb())
            self.pool = Pool(self.installed, harness.kernel, accel=harness.accel or "tcg", jobs=jobs,
                             retries=self.config.getoption("ksft_retries"), log_dir=harness.log_dir)
            harness.cleanups.append(self.pool.close)
            selected = [i.test for i in item.session.items if isinstance(i, KsftItem)]
            self.pool.start(selected)
        return self.pool


def _available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 1024


def report_teststatus(report: pytest.TestReport | pytest.CollectReport) -> tuple[str, str, str] | None:
    if report.when == "call" and report.passed and FLAKY in getattr(report, "user_properties", ()):
        return "flaky", "~", "FLAKY"
    return None
