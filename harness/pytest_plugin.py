"""pytest plugin: options, kernel and guest fixtures, splat attribution.

A thin layer over harness.vm.guest: fixtures start and stop guests; after each
test every live guest prints a mark through its kernel, and any splat its
console showed since the previous mark fails that test.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import itertools
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import results
from .env import prepare
from .kernel.image import file_digest
from .vm.budget import Capacity, auto_workers
from .vm.budget import group as budget_group
from .vm.guest import Guest
from .vm.gcov import Gcov, GcovStore
from .vm.kmemleak import MIN_AGE_S, Kmemleak
from .vm.splat import Splat
from .invocation import named_by_option
from .kernel.kernel import Kernel, KernelPathError
from .lab.lab import Lab
from .lab.topo import Topo
from .kernel.needs import Version, unmet
from .ksft import items as ksft_items
from .util import (ACCELS, GUEST_MEMORY_MB, GUEST_VCPUS, HarnessError, Unavailable, install_terminate_handler,
                   parse_shard, teardown_section, write_atomic)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pluggy import Result

    from .ab.runner import Report
    from .ab.workloads import Workload

GUEST_DEFAULTS = {"vcpus": GUEST_VCPUS, "memory_mb": GUEST_MEMORY_MB, "cmdline": ""}
KEEP_RUNS = 10
BOOT_TEST, BETWEEN_TESTS = "(boot)", "(between tests)"  # gcov collections outside a test


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "netdev harness")
    group.addoption("--kernel", help="guest kernel: a bzImage, or a build-kernel output directory "
                                     "(default: Debian's 6.12 image fetched by tools/setup)")
    group.addoption("--modules", help="modules of --kernel (INSTALL_MOD_PATH or lib/modules/<release>)")
    group.addoption("--kconfig", help=".config of --kernel (default: looked up beside it)")
    group.addoption("--accel", default=os.environ.get("HARNESS_ACCEL", "auto"),
                    choices=ACCELS,
                    help="auto: KVM when a probe guest boots under it, else TCG")
    group.addoption("--keep-guests", action="store_true",
                    help="leave guests running after the session (remove with `harness down`)")
    group.addoption("--harness-logs", default=None,
                    help="where console logs go (default: <rootdir>/logs/<run>, logs/latest)")
    group.addoption("--shard", default=None, metavar="K/N",
                    help="run the K-th of N shards balanced by tests/durations.json (pytest-split; "
                         "`harness merge` joins the shards' results)")
    group.addoption("--results-format", action="append", default=[], choices=results.FORMATS,
                    help="also write the verdicts as netdev CI's executor results (nipa) or KCIDB JSON "
                         "(kcidb): results-<format>.json in the run's log directory (repeatable)")
    group.addoption("--gcov-dir", default=None,
                    help="save each test's gcov counters here (a kernel with images/kconfig/gcov.config; "
                         "`harness coverage` reads them)")
    ksft_items.addoptions(group)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"guest(vcpus={GUEST_VCPUS}, memory_mb={GUEST_MEMORY_MB}, cmdline=''): "
                                       "the guest this test (or module) runs on")
    config.addinivalue_line("markers", "allow_splat(*kinds): splats of these kinds do not fail the test")
    config.addinivalue_line("markers", "needs(*options_or_drivers, version=(major, minor)): what the test needs "
                                       "of its guest kernel; a kernel without it skips the test before any "
                                       "guest boots, naming what is missing")
    kernel = None
    if config.getoption("kernel"):
        try:
            kernel = Kernel.from_path(config.getoption("kernel"), config.getoption("modules"),
                                      config.getoption("kconfig"))
        except KernelPathError as e:
            raise pytest.UsageError(named_by_option(e)) from None
        except HarnessError as e:
            raise pytest.UsageError(str(e)) from None
    config.addinivalue_line("markers", "ksft: a kernel selftest (collection:test) collected by --ksft")
    if not (getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput")):
        # this run's budget group, before any test starts a child pytest (which
        # inherits it and never waits on this run); an xdist controller has
        # none, so that its workers do wait on each other
        budget_group()
    config._harness = HarnessSession(config, kernel)  # type: ignore[attr-defined]
    config.pluginmanager.register(config._harness, "harness-session")  # type: ignore[attr-defined]
    if config.getoption("results_format") and not hasattr(config, "workerinput"):
        # the controller of an xdist run sees every worker's reports: it writes them
        config.pluginmanager.register(ResultsWriter(config, config._harness), "harness-results")  # type: ignore[attr-defined]


class HarnessSession:
    """Session state: the kernel, the accelerator, live guests, the log directory."""

    def __init__(self, config, kernel: Kernel | None):
        self.config = config
        self._kernel = kernel
        self.accel: str | None = None
        self.guests: list[Guest] = []
        self.labs: list[Lab] = []
        self.ready_error: str | None = None
        self._ready = False
        self._flooded: set[Guest] = set()
        self._kmemleak: dict[Guest, Kmemleak] = {}
        self._gcov: dict[Guest, Gcov] = {}
        gcov_dir = config.getoption("gcov_dir")
        self.gcov_store = GcovStore(gcov_dir) if gcov_dir else None
        self._current_test = BOOT_TEST
        self._log_dir: Path | None = None
        self.guest_numbers = itertools.count(1)
        self.cleanups: list = []  # more to stop with the guests (the selftests' pool)
        self.ksft = ksft_items.KsftRuns(config, self) if config.getoption("ksft") else None

    # -- lazily checked environment: one clear error for the whole session ----
    @property
    def kernel(self) -> Kernel:
        if self._kernel is None:
            self._kernel = Kernel.default()
        return self._kernel

    def ensure_ready(self) -> None:
        if self._ready:
            return
        if self.ready_error is None:
            try:
                self._check()
                self._ready = True
                return
            except HarnessError as e:
                self.ready_error = str(e)
        pytest.exit(f"harness: {self.ready_error}", returncode=3)

    def _check(self):
        self._owner = os.getpid()
        # SIGTERM/SIGHUP unwind as Ctrl-C does: pytest tears the fixtures
        # down (labs, guests) after the stack is unwound and its locks
        # released, never inside the handler nor in the middle of a
        # teardown; from before prepare(), whose builds (the agent's gcc)
        # would outlive a process killed by the default action
        install_terminate_handler()
        atexit.register(self.stop_all)
        watch_parent()
        self.accel = prepare(self.kernel, self.config.getoption("accel"))

    @property
    def log_dir(self) -> Path:
        """logs/<run>/ (``latest`` names it); under pytest-xdist, a worker's
        is logs/<run>/<gwN>/ in the run's the controller made."""
        if self._log_dir is None:
            # absolute: guests are handed paths under it (a selftest install the pool shares)
            base = Path(self.config.getoption("harness_logs") or Path(self.config.rootpath) / "logs").absolute()
            worker = getattr(self.config, "workerinput", {})
            if "harness_run" in worker:
                self._log_dir = base / worker["harness_run"] / worker["workerid"]
                self._log_dir.mkdir(parents=True, exist_ok=True)
                return self._log_dir
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            self._log_dir = base / f"{stamp}-{os.getpid()}"
            self._log_dir.mkdir(parents=True, exist_ok=True)
            # marks a run's directory: `harness merge` takes its results-*.json, not what its tests wrote
            write_atomic(self._log_dir / "run.json", json.dumps(
                {"started": stamp, "args": list(self.config.invocation_params.args)}) + "\n")
            latest = base / "latest"
            if latest.is_symlink() or not latest.exists():
                latest.unlink(missing_ok=True)
                latest.symlink_to(self._log_dir.name)
            prune_runs(base, keep=self._log_dir)
        return self._log_dir

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        """pytest-xdist's controller: every worker logs under this run's directory."""
        node.workerinput["harness_run"] = self.log_dir.name

    # -- guests ---------------------------------------------------------------
    def start_guest(self, name: str, **params) -> Guest:
        self.ensure_ready()
        guest = Guest(name, self.kernel, accel=self.accel or "tcg", log_dir=self.log_dir, **params)
        guest.start()
        self.guests.append(guest)
        self.probe_kmemleak([guest])
        self.probe_gcov([guest])
        return guest

    def stop_guest(self, guest: Guest) -> None:
        with teardown_section():
            self.collect_gcov([guest])
            if not self.config.getoption("keep_guests"):
                guest.stop()
            if guest in self.guests:
                self.guests.remove(guest)
            self._kmemleak.pop(guest, None)

    def stop_all(self) -> None:
        # A forked copy of this process inherits atexit handlers: only the
        # process that built the guests and labs may tear them down.
        if os.getpid() != getattr(self, "_owner", os.getpid()):
            return
        while self.cleanups:
            self.cleanups.pop()()
        for lab in list(self.labs):
            self.stop_lab(lab)
        for guest in list(self.guests):
            self.stop_guest(guest)

    # -- labs -------------------------------------------------------------------
    def start_lab(self, topology: str | Path | Topo) -> Lab:
        """Bring up a topology: a name under topologies/, a path, or a Topo."""
        self.ensure_ready()
        assert self.accel is not None  # ensure_ready() chose it
        if isinstance(topology, Topo):
            lab = Lab(topology.build(), kernel=self.kernel, accel=self.accel, log_dir=self.log_dir)
        else:
            path = Path(topology)
            if not path.suffix:
                path = Path(self.config.rootpath) / "topologies" / f"{topology}.yaml"
            lab = Lab.from_yaml(path, kernel=self.kernel, accel=self.accel, log_dir=self.log_dir)
        self.labs.append(lab)
        try:
            lab.up()
        except BaseException:
            if lab in self.labs:
                self.labs.remove(lab)
            raise
        self.guests += lab.all_guests
        self.probe_kmemleak(lab.all_guests)
        self.probe_gcov(lab.all_guests)
        return lab

    def stop_lab(self, lab: Lab) -> None:
        with teardown_section():
            guests = lab.all_guests
            self.collect_gcov(guests)
            if not self.config.getoption("keep_guests"):
                lab.down()
            if lab in self.labs:
                self.labs.remove(lab)
            for guest in guests:
                if guest in self.guests:
                    self.guests.remove(guest)
                self._kmemleak.pop(guest, None)
                self._gcov.pop(guest, None)

    # -- splats -----------------------------------------------------------------
    def collect_splats(self, item) -> list[tuple[Guest, Splat]]:
        """Splats printed since the previous test, per live guest; writes the
        test's slice of each console log."""
        found = []
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid)[-120:]
        for guest in list(self.guests):
            if guest.console is None:
                continue
            start = guest.mark_line
            if guest.alive:
                try:
                    end = guest.mark()
                except HarnessError:
                    end = len(guest.console)
            else:
                end = len(guest.console)
                guest.mark_line = end
            found += [(guest, s) for s in guest.splats(start, end)]
            if end > start:
                out = self.log_dir / "tests" / slug
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{guest.name}.console.log").write_text(guest.console.text(start, end) + "\n")
        return found

    # -- kmemleak: a kernel built with images/kconfig/kmemleak.config ----------
    def probe_kmemleak(self, guests: list[Guest]) -> None:
        """Each guest just booted: its kmemleak, if its kernel has one, with
        what the boot left cleared (one wait for all of them)."""
        found = []
        for guest in guests:
            if guest.kernel.provides("CONFIG_DEBUG_KMEMLEAK") is False:
                continue  # its config says so: no command per boot to ask
            self._kmemleak[guest] = detector = Kmemleak(guest)
            if detector.available:
                found.append(detector)
        for n, detector in enumerate(found):
            try:
                detector.collect(waited=MIN_AGE_S if n else 0.0)
            except HarnessError as e:
                detector.available = False
                log.warning("kmemleak in guest %s: left alone: %s", detector.where.name, e)

    def collect_leaks(self) -> list[str]:
        """The objects kmemleak found unreferenced since the previous test,
        per live guest whose kernel has it (one wait for all of them).  A
        collection that fails is named, and that guest is not asked again."""
        detectors = [(g, d) for g in self.guests if g.alive and (d := self._kmemleak.get(g)) and d.available]
        texts = []
        for n, (guest, detector) in enumerate(detectors):
            try:
                count, leaks = detector.collect(waited=MIN_AGE_S if n else 0.0)
            except HarnessError as e:
                detector.available = False
                texts.append(f"kmemleak in guest {guest.name}: could not collect: {e}")
                continue
            if count:
                more = f" (the first {len(leaks)})" if count > len(leaks) else ""
                texts.append(f"kmemleak in guest {guest.name}: {count} unreferenced object(s){more}:\n"
                             + "\n".join(f"  {leak.summary()}" for leak in leaks))
        return texts

    # -- gcov (--gcov-dir): each test's counters, for `harness coverage` -------
    def probe_gcov(self, guests: list[Guest]) -> None:
        """Each guest just booted: its counters so far are the boot's."""
        if self.gcov_store is None:
            return
        for guest in guests:
            gcov = Gcov(guest)
            if not gcov.available:
                log.warning("gcov: guest %s's kernel has no /sys/kernel/debug/gcov (not a gcov build)", guest.name)
                continue
            self._gcov[guest] = gcov
        self.collect_gcov(guests, BOOT_TEST)

    def collect_gcov(self, guests: list[Guest], test: str | None = None) -> None:
        """The live guests' counters since their last collection, saved as
        the current test's (or ``test``'s), then reset."""
        if self.gcov_store is None:
            return
        for guest in guests:
            gcov = self._gcov.get(guest)
            if gcov is None or not guest.alive:
                continue
            try:
                self.gcov_store.save(test or self._current_test, guest.name, gcov.collect())
            except HarnessError as e:
                self._gcov.pop(guest, None)
                log.warning("gcov: guest %s: not collected again: %s", guest.name, e)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Iterator[None]:
        """After the test's own cleanups (a deferred `ip link del` runs the
        unregister path): what its guests ran is the test's."""
        self._current_test = item.nodeid
        yield
        self.collect_gcov(list(self.guests))
        self._current_test = BETWEEN_TESTS

    # -- kernel needs: skip before any guest boots -----------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self._current_test = item.nodeid  # what its fixtures run counts as its own (gcov)
        reasons = unmet(self.kernel, item_needs(item))
        if reasons:
            pytest.skip("; ".join(reasons))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        """Needs no config could decide (a kernel without one, run-time
        features) are asked of the test's guests, once per guest.  Then the
        test runs; a command that stalls after a splat fails at once,
        unless the test provokes that kind of splat on purpose."""
        for guest in self._guests_of(item):
            reasons = unmet(guest.kernel, item_needs(item), ask=guest.ask)
            if reasons:
                pytest.skip("; ".join(reasons))
        allowed = _allowed_splats(item)
        for guest in self.guests:
            if guest.agent is not None:
                guest.agent.allowed_splats = allowed
                guest.agent.watch_from = guest.mark_line
        try:
            yield
        finally:
            for guest in self.guests:
                if guest.agent is not None:
                    guest.agent.allowed_splats = set()
                    guest.agent.watch_from = None

    def _guests_of(self, item) -> list:
        funcargs = getattr(item, "funcargs", {})
        return [v for v in funcargs.values() if isinstance(v, Guest)]

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item,
                                  call: pytest.CallInfo[None]) -> Generator[None, Result[pytest.TestReport], None]:
        outcome = yield
        report = outcome.get_result()
        if call.excinfo is not None and call.excinfo.errisinstance(Unavailable):
            # a lab or a driver found its kernel lacking, or the host too slow: a named skip, not a failure
            report.outcome = "skipped"
            line = item.location[1]  # 0-based; a skip report's line counts from 1
            report.longrepr = (str(item.path), line + 1 if line is not None else None,  # type: ignore[assignment]
                               f"Skipped: {call.excinfo.value}")  # (pytest takes None: no line)
            return
        if call.when != "call" or not self.guests:
            return
        if report.failed:
            # a kernel left wedged by the failure (rtnl held, say) would
            # fail every later test on its guest: the next test gets a fresh one
            for guest in list(self.guests):
                if guest.alive and not guest.healthy():
                    guest.retire(f"retired after {item.nodeid} left it unresponsive")
        allowed = _allowed_splats(item)
        splats = [(g, s) for g, s in self.collect_splats(item) if s.kind not in allowed]
        texts = [f"kernel splat in guest {g.name} ({s.kind}):\n{s.text}" for g, s in splats]
        leaks = self.collect_leaks()  # collected (and cleared) even where allowed
        if "kmemleak" not in allowed:
            texts += leaks
        for guest in list(self.guests):
            flood = guest.console.flood if guest.console is not None else None
            if flood is not None and guest not in self._flooded:
                # what the host keeps of its console is spent: the next test gets a fresh guest
                self._flooded.add(guest)
                texts.append(f"console flood in guest {guest.name}: {flood.reason}")
                guest.retire(f"retired after its console flooded during {item.nodeid}")
        if texts:
            text = "\n\n".join(texts)
            if report.passed:
                report.outcome = "failed"
                report.longrepr = text
            else:
                report.longrepr = f"{report.longrepr}\n\n{text}"

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.stop_all()

    # -- kernel selftests (--ksft): they replace the files in tests/ --------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> bool | None:
        """The selftests' items instead of the files' (reported, selected
        with -k and counted as pytest does for its own)."""
        if self.ksft is None:
            return None
        try:
            items = self.ksft.items(session)
        except HarnessError as e:
            raise pytest.UsageError(str(e)) from None
        hook = session.config.hook
        collected: list[pytest.Item | pytest.Collector] = list(items)
        hook.pytest_collectreport(report=pytest.CollectReport("", "passed", None, collected))
        hook.pytest_collection_modifyitems(session=session, config=session.config, items=items)
        session.items = items
        session.testscollected = len(items)
        hook.pytest_collection_finish(session=session)
        return True

    def pytest_report_teststatus(self, report: pytest.TestReport | pytest.CollectReport,
                                 config: pytest.Config) -> tuple[str, str, str] | None:
        return ksft_items.report_teststatus(report)

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        kernel = self._kernel
        where = kernel or "default (Debian 6.12, fetched by tools/setup)"
        return [f"harness: kernel {where}; accel {config.getoption('accel')}"]


class ResultsWriter:
    """--results-format: every test's phases gathered, written at the end."""

    def __init__(self, config: pytest.Config, session: HarnessSession):
        self.config, self.session = config, session
        self.phases: dict[str, list[dict]] = {}
        self.start = time.time()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        message = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2])  # (file, line, "Skipped: why")
        elif report.outcome != "passed":
            message = _last_line(report.longreprtext)
        phase = {"when": report.when, "outcome": report.outcome, "start": getattr(report, "start", time.time()),
                 "duration": report.duration, "message": message}
        if hasattr(report, "wasxfail"):
            phase["wasxfail"] = report.wasxfail
        self.phases.setdefault(report.nodeid, []).append(phase)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:  # a file that does not import: an error of its own, not a missing test
            self.phases.setdefault(report.nodeid, []).append(
                {"when": "collect", "outcome": "failed", "start": time.time(), "duration": 0.0,
                 "message": _last_line(report.longreprtext)})

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        verdicts = [results.verdict_of(nodeid, phases) for nodeid, phases in self.phases.items()]
        try:
            kernel = self.session.kernel
            release, digest = kernel.release, file_digest(kernel.image).split(":")[0]
        except (HarnessError, OSError):
            release, digest = "unknown", "0" * 16  # a run with no kernel (a usage error, unit tests alone)
        facts = {"kernel_release": release, "kernel_digest": digest,
                 "start": self.start, "end": time.time(), "link": self.session.log_dir.resolve().as_uri(),
                 "accel": self.session.accel or self.config.getoption("accel")}
        for fmt in dict.fromkeys(self.config.getoption("results_format")):
            out = self.session.log_dir / f"results-{fmt}.json"
            write_atomic(out, json.dumps(results.render(fmt, verdicts, **facts), indent=1) + "\n")
            log.info("results (%s): %s", fmt, out)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        for fmt in dict.fromkeys(self.config.getoption("results_format")):
            terminalreporter.write_line(f"harness: {fmt} results: {self.session.log_dir / f'results-{fmt}.json'}")


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


# -- pytest-xdist: -n N workers, each with its own guests and labs ----------------

@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config: pytest.Config) -> Generator[None, Any, Any]:
    """-n without --dist keeps a test file on one worker (--dist loadfile):
    its module-scoped guests and labs boot once, not once per worker.
    --shard K/N is pytest-split's --group K --splits N, balanced by the
    durations kept in the repository (tools/refresh-durations)."""
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", None) == "no":
        config.option.dist = "loadfile"
    shard = config.getoption("shard")
    if shard is not None:
        try:
            k, n = parse_shard(shard)
        except HarnessError as e:
            raise pytest.UsageError(str(e)) from None
        config.option.group, config.option.splits = k, n
        config.option.splitting_algorithm = "least_duration"
    durations = getattr(config.option, "durations_path", None)
    if durations is not None and Path(durations) == Path.cwd() / ".test_durations":
        config.option.durations_path = str(DURATIONS)  # pytest-split's default: the one kept here
    # a wrapper: before xdist's and pytest-split's own (either order of plugin loading)
    return (yield)


DURATIONS = Path(__file__).resolve().parent.parent / "tests" / "durations.json"


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """-n auto: as many workers as the host budget runs default guests at
    once (harness.vm.budget; a worker whose guest would not fit waits)."""
    try:
        capacity = Capacity.of_host()
    except HarnessError as e:
        raise pytest.UsageError(str(e)) from None
    return auto_workers(capacity, GUEST_VCPUS, GUEST_MEMORY_MB)


PARENT_ENV = "HARNESS_PARENT_PID"


def watch_parent() -> None:
    """A run started by another harness process (harness mutants,
    verify-fix: HARNESS_PARENT_PID) ends when that process is gone, even
    SIGKILLed: it is in a session of its own, so nothing else would stop it."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit():
        return
    me = os.getpid()

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(1)
        os.kill(me, signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


RUN_NAME = re.compile(r"\d{8}-\d{6}-\d+")  # what log_dir names a pytest run's directory


def prune_runs(base: Path, keep: Path) -> None:
    """The last KEEP_RUNS pytest runs' directories stay (by when they were
    last written); nothing else under ``base`` is touched (the CLI's
    mutants-*, ab-*, run-* are not runs of this kind), nor ``keep``."""
    runs = [p for p in base.iterdir() if RUN_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    runs.sort(key=lambda p: p.stat().st_mtime)
    for old in [p for p in runs if p != keep][:-(KEEP_RUNS - 1) or None]:
        shutil.rmtree(old, ignore_errors=True)


def item_needs(item) -> list:
    """Everything the test's needs markers (its own, its class's, its
    module's) ask for, versions included."""
    found = []
    for marker in item.iter_markers("needs"):
        found += list(marker.args)
        if "version" in marker.kwargs:
            found.append(Version(tuple(marker.kwargs["version"]), marker.kwargs.get("why", "")))
    return found


def _allowed_splats(item) -> set[str]:
    allowed = set()
    for marker in item.iter_markers("allow_splat"):
        allowed.update(marker.args)
    return allowed


# -- fixtures ------------------------------------------------------------------

@pytest.fixture(scope="session")
def harness(pytestconfig) -> HarnessSession:
    session = pytestconfig._harness
    session.ensure_ready()
    return session


@pytest.fixture(scope="session")
def kernel(harness) -> Kernel:
    return harness.kernel


def _guest_params(node) -> dict:
    params = dict(GUEST_DEFAULTS)
    marker = node.get_closest_marker("guest")
    if marker is not None:
        params.update(marker.kwargs)
        unknown = set(marker.kwargs) - set(GUEST_DEFAULTS)
        if unknown:
            raise pytest.UsageError(f"{node.nodeid}: guest marker: unknown {sorted(unknown)}; "
                                    f"expected {sorted(GUEST_DEFAULTS)}")
    return params


@pytest.fixture(scope="module")
def _module_guests(harness):
    """Guests shared by a module's tests, one per distinct parameter set."""
    pool: dict[tuple, Guest] = {}
    yield pool
    for guest in pool.values():
        harness.stop_guest(guest)


@pytest.fixture
def guest(request, harness, _module_guests) -> Guest:
    """The module's guest for this test's parameters; a fresh one after a crash."""
    params = _guest_params(request.node)
    key = tuple(sorted(params.items()))
    current = _module_guests.get(key)
    if current is not None and not current.alive:
        harness.stop_guest(current)
        current = None
    if current is None:
        name = f"g{next(harness.guest_numbers)}-{request.module.__name__.split('.')[-1][-12:]}"
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", name)
        current = _module_guests[key] = harness.start_guest(name, **params)
    return current


@pytest.fixture(scope="module")
def _module_labs(harness):
    labs: dict[str, Lab] = {}
    yield labs
    for lab in labs.values():
        harness.stop_lab(lab)


@pytest.fixture
def lab(harness: HarnessSession,
        _module_labs: dict[str | Path | Topo, Lab]) -> Callable[[str | Path | Topo], Lab]:
    """lab("proxy-hops") -> the module's running Lab for topologies/proxy-hops.yaml
    (or a path, or a harness.lab.topo.Topo), brought up on first use and torn
    down after the module."""

    def get(topology: str | Path | Topo) -> Lab:
        current = _module_labs.get(topology)
        if current is not None and not all(g.alive for g in current.all_guests):
            harness.stop_lab(current)  # a guest crashed: the next test gets a fresh lab
            current = None
        if current is None:
            # One lab at a time: idle TCG guests still cost host CPU.
            for other in list(_module_labs):
                harness.stop_lab(_module_labs.pop(other))
            current = _module_labs[topology] = harness.start_lab(topology)
        return current

    return get


@pytest.fixture
def defer() -> Iterator[Callable[..., Any]]:
    """defer(fn, *args, **kwargs): fn called at the test's teardown, the last
    deferred first, every one even when another raises (the kernel
    selftests' ``defer()``; an ``ExitStack`` underneath)."""
    with contextlib.ExitStack() as stack:
        yield stack.callback


@pytest.fixture
def ab(harness: HarnessSession, request: pytest.FixtureRequest) -> Callable[..., Report]:
    """ab("pktgen_queue_xmit", base=k1, patched=k2, runs=5) -> harness.ab.runner.Report
    (kernels default to the session's; *_options go to the workload's sample).
    JSON and PNG land in the run's log directory under ab/<test>/."""
    from .ab.runner import Side, run_ab
    from .ab.workloads import WORKLOADS

    def run(workload: str | Workload, base: Kernel | None = None, patched: Kernel | None = None, *,
            base_options: dict | None = None, patched_options: dict | None = None, **kw: Any) -> Report:
        wl = WORKLOADS[workload] if isinstance(workload, str) else workload
        out = harness.log_dir / "ab" / re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)
        assert harness.accel is not None  # the harness fixture made the session ready
        report = run_ab(wl, Side("base", base or harness.kernel, base_options or {}),
                        Side("patched", patched or harness.kernel, patched_options or {}),
                        accel=harness.accel, log_dir=out / "logs", **kw)
        report.write(out)
        return report

    return run


@pytest.fixture
def make_guest(harness: HarnessSession) -> Iterator[Callable[..., Guest]]:
    """Start extra guests for one test: make_guest("g2", vcpus=4, cmdline=...)."""
    made = []

    def make(name: str = "extra", **params) -> Guest:
        unknown = set(params) - set(GUEST_DEFAULTS)
        if unknown:
            raise TypeError(f"make_guest: unknown {sorted(unknown)}; expected {sorted(GUEST_DEFAULTS)}")
        guest = harness.start_guest(name, **{**GUEST_DEFAULTS, **params})
        made.append(guest)
        return guest

    yield make
    for guest in made:
        harness.stop_guest(guest)
