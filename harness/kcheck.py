"""`harness kernel check`: what the suite can run on a kernel, per behaviour
and per test file, before any guest boots; and the smallest config
fragment that would make everything run.

    report = check(kernel, collect(["tests/"], kernel_arg))
    print(report.table()); report.fragment()
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

from .kernel.needs import Feature, Option, Version, expand, fragment, unmet
from .util import REPO, HarnessError
from .invocation import pytest_args
from .kernel.kernel import Kernel

ROOT = REPO


@dataclasses.dataclass
class TestVerdict:
    nodeid: str
    behaviour: str              # test_threaded_backlog.py -> threaded_backlog
    skips: list[str]            # why this kernel cannot run it ([] when it can)
    at_run_time: list[str]      # needs only a booted guest can answer
    missing_options: list[Option]


@dataclasses.dataclass
class CheckReport:
    kernel: Kernel
    verdicts: list[TestVerdict]

    def _groups(self, key) -> dict[str, list[TestVerdict]]:
        out: dict[str, list[TestVerdict]] = {}
        for v in self.verdicts:
            out.setdefault(key(v), []).append(v)
        return out

    def blocked(self) -> list[TestVerdict]:
        return [v for v in self.verdicts if v.skips]

    def fragment(self) -> str:
        return fragment(o for v in self.verdicts for o in v.missing_options)

    def table(self) -> str:
        k = self.kernel
        config = k.config_path or ("embedded (CONFIG_IKCONFIG)" if k.config_known
                                   else "unknown: asked of each guest at run time")
        lines = [f"kernel {k.release}: {k.image}",
                 f"  config: {config}",
                 f"  modules: {k.modules_dir or 'none found'}", ""]
        for title, key in (("behaviour", lambda v: v.behaviour), ("test file", lambda v: v.nodeid.split("::")[0])):
            groups = self._groups(key)
            width = max([len(title)] + [len(g) for g in groups])
            lines.append(f"{title.ljust(width)}  runs  skips  at run time  why")
            for name, vs in sorted(groups.items()):
                runs = sum(1 for v in vs if not v.skips)
                skips = [v for v in vs if v.skips]
                later = sum(1 for v in vs if not v.skips and v.at_run_time)
                why = sorted({r.split(":")[0] for v in skips for r in v.skips})
                lines.append(f"{name.ljust(width)}  {runs:4}  {len(skips):5}  {later:11}  {'; '.join(why)}")
            lines.append("")
        missing = self.fragment()
        versions = sorted({r for v in self.verdicts for r in v.skips if r.startswith("needs Linux")})
        if missing:
            lines += ["To run every test, add to the kernel's config (or build it with tools/build-kernel,",
                      "which merges images/kconfig/harness.config):", missing.rstrip(), ""]
        if versions:
            lines += ["No config option helps these:", *versions, ""]
        if not missing and not versions:
            lines.append("Every test can run on this kernel (run-time needs aside).")
        return "\n".join(lines).rstrip() + "\n"


def behaviour_of(nodeid: str) -> str:
    name = Path(nodeid.split("::")[0]).stem
    return name.removeprefix("test_")


def check(kernel, items: list[tuple[str, list]]) -> CheckReport:
    """items: (nodeid, needs) pairs, as collect() gives them."""
    verdicts = []
    for nodeid, needs in items:
        found = expand(*needs)
        skips = unmet(kernel, found)
        missing = [n for n in found if isinstance(n, Option) and kernel.provides(n.name, n.module) is False]
        later = [n.name for n in found if isinstance(n, Feature)]
        later += [n.name for n in found if isinstance(n, Option) and kernel.provides(n.name, n.module) is None]
        verdicts.append(TestVerdict(nodeid, behaviour_of(nodeid), skips, later, missing))
    return CheckReport(kernel, verdicts)


def collect(args: list[str]) -> list[tuple[str, list]]:
    """(nodeid, needs) of the tests pytest would run with ``args`` (paths,
    -k, --kernel): a collection only, nothing boots."""
    import pytest

    from .pytest_plugin import item_needs

    class Collector:
        items: list = []

        def pytest_collection_finish(self, session: pytest.Session) -> None:
            self.items = [(item.nodeid, item_needs(item)) for item in session.items]

    collector = Collector()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = pytest.main(pytest_args("--collect-only", *args, rootdir=ROOT, quiet=True),
                           plugins=[collector])
    if code not in (0, 5):
        raise HarnessError(f"collecting the tests failed (pytest exit {code}):\n{out.getvalue()[-3000:]}")
    return collector.items


__all__ = ["check", "collect", "CheckReport", "Version"]
