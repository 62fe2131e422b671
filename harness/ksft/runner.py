"""Run installed selftests in a pool of harness guests, one test at a time
per guest, the way netdev's CI does: several guests in parallel, the
longest test first, a crash blamed on the test that caused it and its
guest replaced, a failed test retried once in a fresh guest.

    pool = Pool(installed, kernel, accel="tcg", jobs=2, retries=1, log_dir=logs)
    pool.start(tests)                 # guests boot, workers take tests in order
    result = pool.result(test)        # KsftResult once that test is done
    pool.close()                      # guests down, ksft.json written

Each test runs through the kernel's own ``run_kselftest.sh -t
collection:test``, so its TAP, its exit-4 skips and its timeout
(``--override-timeout``: the collection's ``settings``, scaled for a slow
machine, which ``KSFT_MACHINE_SLOW=yes`` also tells the test) are
kselftest's.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..failures import classify_failure
from ..util import cache_dir, write_atomic
from ..vm.console import GuestError
from ..vm.guest import Guest
from ..kernel.kernel import Kernel
from . import ktap
from .build import Installed
from .collection import Selftest, longest_first, read_settings, test_timeout

log = logging.getLogger(__name__)

FAILING = ("fail", "timeout", "crash", "not built")
# TCG runs a guest several times slower than the hardware the timeouts were set on
TCG_TIMEOUT_SCALE = 4.0
GUEST_VCPUS, GUEST_MEMORY_MB = 2, 1024  # each pool guest's size


@dataclasses.dataclass
class Attempt:
    outcome: str                 # pass, fail, skip, xfail, timeout, crash, "not built"
    seconds: float
    reason: str                  # a skip's or a failure's one-line story
    guest: str
    subtests: list[dict] = dataclasses.field(default_factory=list)   # {"name", "outcome", "reason"}
    splats: list[dict] = dataclasses.field(default_factory=list)     # {"kind", "title", "text"}
    output: str = ""


@dataclasses.dataclass
class KsftResult:
    test: Selftest
    attempts: list[Attempt]

    @property
    def outcome(self) -> str:
        """The last attempt's; "flaky" when a failed attempt was followed by a pass."""
        last = self.attempts[-1].outcome
        if last == "pass" and any(a.outcome in FAILING for a in self.attempts[:-1]):
            return "flaky"
        return last

    def to_json(self) -> dict:
        return {"test": self.test.id, "outcome": self.outcome,
                "seconds": round(sum(a.seconds for a in self.attempts), 1),
                "attempts": [{k: v for k, v in dataclasses.asdict(a).items() if k != "output"}
                             for a in self.attempts]}

    @classmethod
    def from_json(cls, data: dict, output_of: Callable[[int], str] = lambda n: "") -> KsftResult:
        """The inverse of ``to_json`` (a ksft.json entry); ``output_of(n)``
        gives attempt n's output, which ksft.json keeps in a log file."""
        suite, _, name = data["test"].partition(":")
        names = {f.name for f in dataclasses.fields(Attempt)}
        return cls(Selftest(suite, name),
                   [Attempt(**{k: v for k, v in a.items() if k in names and k != "output"}, output=output_of(n))
                    for n, a in enumerate(data["attempts"], 1)])


def default_jobs(vcpus: int, memory_mb: int, host_cpus: int, host_available_mb: int) -> int:
    """Guests to run at once: one per ``vcpus`` host CPUs, as many as the
    host's available memory holds with a quarter of it spare."""
    by_cpu = max(1, host_cpus // vcpus)
    by_memory = max(1, int(host_available_mb * 0.75) // (memory_mb + 256))
    return min(by_cpu, by_memory)


def judge(output: str, rc: int) -> tuple[str, str, list[dict]]:
    """(outcome, reason, subtests) from one ``run_kselftest.sh -t`` run:
    the runner's depth-0 result line decides; the test's own nested
    results are its subtests."""
    results = ktap.parse(output)
    top = [r for r in results if r.depth == 0]
    subtests = [{"name": r.name, "outcome": r.outcome, "reason": r.reason} for r in results if r.depth == 1]
    if not top:
        return "fail", f"no kselftest result line (run_kselftest.sh exit {rc})", subtests
    result = top[-1]
    outcome = result.outcome
    if outcome == "skip":
        return outcome, ktap.skip_reason(output, result) or "exit 4 (kselftest's skip), no reason printed", subtests
    if outcome == "timeout":
        return outcome, f"TIMEOUT: {result.reason}", subtests
    if outcome == "fail":
        failed = [s["name"] for s in subtests if s["outcome"] == "fail"]
        why = result.reason or "failed"
        return outcome, why + (f"; failed subtests: {', '.join(failed)}" if failed else ""), subtests
    return outcome, result.reason, subtests


class Pool:
    def __init__(self, installed: Installed, kernel: Kernel, *, accel: str, jobs: int, retries: int = 1,
                 log_dir: Path, vcpus: int = GUEST_VCPUS, memory_mb: int = GUEST_MEMORY_MB,
                 times: dict[str, float] | None = None):
        self.installed = installed
        self.kernel = kernel
        self.accel = accel
        self.jobs = max(1, jobs)
        self.retries = max(0, retries)
        self.log_dir = Path(log_dir)
        self.vcpus, self.memory_mb = vcpus, memory_mb
        # previous runtimes, longest first; None: the cache's, updated at close()
        self.times = times
        self.scale = (TCG_TIMEOUT_SCALE if accel == "tcg" else 1.0) * kernel.time_scale
        self.results: dict[str, KsftResult] = {}
        self._done: dict[str, threading.Event] = {}
        self._queue: collections.deque[Selftest] = collections.deque()
        self._lock = threading.Lock()         # the queue and results
        self._start_lock = threading.Lock()   # libvirt domain starts, one at a time
        self._threads: list[threading.Thread] = []
        self._guests: set[Guest] = set()
        self._numbers = iter(range(1, 1 << 30))
        self._closing = False
        self.started_at: float | None = None
        self.wall_s: float | None = None

    # -- lifecycle ---------------------------------------------------------------
    def start(self, tests: list[Selftest]) -> None:
        ordered = longest_first(tests, _load_times() if self.times is None else self.times)
        self._queue.extend(ordered)
        self._done.update({t.id: threading.Event() for t in ordered})
        self.started_at = time.monotonic()
        for n in range(min(self.jobs, len(ordered))):
            thread = threading.Thread(target=self._worker, name=f"ksft-worker-{n + 1}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def result(self, test: Selftest) -> KsftResult:
        self._done[test.id].wait()
        return self.results[test.id]

    def close(self) -> None:
        self._closing = True
        with self._lock:
            self._queue.clear()
        for guest in list(self._guests):
            guest.stop()
        for thread in self._threads:
            thread.join(timeout=30)
        if self.started_at is not None and self.wall_s is None:
            self.wall_s = time.monotonic() - self.started_at
        if self.results:
            self.write_json(self.log_dir / "ksft.json")
            if self.times is None:
                _save_times({r.test.id: sum(a.seconds for a in r.attempts) for r in self.results.values()})

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        counts = collections.Counter(r.outcome for r in self.results.values())
        write_atomic(path, json.dumps({
            "source": self.installed.source, "install": str(self.installed.path),
            "build_failures": list(self.installed.build_failures), "kernel": str(self.kernel),
            "accel": self.accel, "jobs": self.jobs, "retries": self.retries, "timeout_scale": self.scale,
            "wall_s": round(self.wall_s or 0.0, 1), "counts": dict(counts),
            "tests": [r.to_json() for r in self.results.values()]}, indent=1) + "\n")

    # -- workers -----------------------------------------------------------------
    def _new_guest(self) -> Guest:
        with self._start_lock:
            if self._closing:
                raise GuestError("the pool is closing")
            guest = Guest(f"ksft{next(self._numbers)}", self.kernel, vcpus=self.vcpus, memory_mb=self.memory_mb,
                          accel=self.accel, log_dir=self.log_dir / "ksft-guests", shares=[self.installed.path])
            self._guests.add(guest)
            guest.start()
            return guest

    def _drop(self, guest: Guest | None):
        if guest is not None:
            self._guests.discard(guest)
            guest.stop()

    def _worker(self):
        guest: Guest | None = None
        try:
            while not self._closing:
                with self._lock:
                    if not self._queue:
                        break
                    test = self._queue.popleft()
                attempts: list[Attempt] = []
                while True:
                    try:
                        if guest is None or not guest.alive or attempts:  # a retry gets a fresh guest
                            self._drop(guest)
                            guest = self._new_guest()
                        attempt = self._run(guest, test)
                    except GuestError as e:  # the guest would not boot: the test cannot run
                        attempt = Attempt("fail", 0.0, f"harness: {str(e).splitlines()[0]}", "-",
                                          output=str(e))
                    attempts.append(attempt)
                    log.info("ksft: %s %s in %.1f s on %s%s", test.id, attempt.outcome, attempt.seconds,
                             attempt.guest, f" ({attempt.reason})" if attempt.reason else "")
                    if attempt.outcome == "crash" or (guest is not None and not guest.healthy()):
                        self._drop(guest)
                        guest = None
                    if attempt.outcome not in FAILING or len(attempts) > self.retries or self._closing:
                        break
                with self._lock:
                    self.results[test.id] = KsftResult(test, attempts)
                self._done[test.id].set()
        finally:
            self._drop(guest)
            if self._closing:  # tests nobody will run: let their waiters go
                for test_id, event in self._done.items():
                    if not event.is_set():
                        self.results.setdefault(test_id, KsftResult(
                            Selftest(*test_id.split(":", 1)),
                            [Attempt("fail", 0.0, "harness: the pool closed before the test ran", "-")]))
                        event.set()

    def timeout_s(self, test: Selftest) -> float | None:
        settings = self.installed.path / test.collection / "settings"
        text = settings.read_text() if settings.exists() else ""
        return test_timeout(read_settings(text, str(settings)), self.scale, str(settings))

    def _run(self, guest: Guest, test: Selftest) -> Attempt:
        program = self.installed.path / test.collection / test.name
        if not program.exists():
            failed = [f for f in self.installed.build_failures if f.startswith(test.collection + "/")]
            return Attempt("not built", 0.0, f"{test.collection}/{test.name} is not installed: its build failed "
                           f"(see {self.installed.build_log}); programs that did not build: "
                           f"{', '.join(failed) or 'none named'}", guest.name)
        timeout = self.timeout_s(test)
        # IPv6 on (the harness guest turns it off for exact counts); a fresh
        # writable copy of the install (the host's is read-only over 9p and
        # a test may write beside itself); then kselftest's own runner
        command = ("sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0; "
                   f"rm -rf /tmp/ksft && cp -a {shlex.quote(str(self.installed.path))} /tmp/ksft && "
                   f"cd /tmp/ksft && KSFT_MACHINE_SLOW=yes "
                   f"./run_kselftest.sh -t {shlex.quote(test.id)} -o {int(timeout or 0)}")
        start = guest.mark()
        t0 = time.monotonic()
        outcome: str | None = None
        subtests: list[dict] = []
        try:
            # kselftest times the test; this only catches a runner that hangs past it
            result = guest.spawn(command).wait(timeout + 120 if timeout else None)
            output, rc = result.stdout + result.stderr, result.rc
        except GuestError as e:
            output, rc = str(e), -1
            outcome, reason = "crash", str(e).splitlines()[0]
        seconds = time.monotonic() - t0
        if outcome is None:
            outcome, reason, subtests = judge(output, rc)
        end = guest.mark() if guest.healthy() else len(guest.console)
        splats = guest.splats(start, end)
        if splats and outcome not in FAILING:
            outcome, reason = "fail", f"kernel {splats[0].kind} during the test: {splats[0].title}"
        elif splats:
            reason += f"; kernel {splats[0].kind}: {splats[0].title}"
        self._keep_logs(guest, test, output, start, end)
        return Attempt(outcome, seconds, reason, guest.name, subtests,
                       [{"kind": s.kind, "title": s.title, "text": s.text} for s in splats], output)

    def _keep_logs(self, guest: Guest, test: Selftest, output: str, start: int, end: int):
        out = attempt_logs_dir(self.log_dir, test.id)
        out.mkdir(parents=True, exist_ok=True)
        n = len(list(out.glob("attempt*.output.log"))) + 1
        (out / f"attempt{n}.output.log").write_text(output)
        (out / f"attempt{n}.console.log").write_text(guest.console.text(start, end) + "\n")


def attempt_logs_dir(log_dir: Path, test_id: str) -> Path:
    """Where a test's attempts keep their output and console
    (attemptN.output.log, attemptN.console.log)."""
    return Path(log_dir) / "ksft" / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_id)


def _times_path() -> Path:
    return cache_dir() / "ksft-times.json"


def _load_times() -> dict[str, float]:
    try:
        return json.loads(_times_path().read_text())
    except (OSError, ValueError):
        return {}


def _save_times(new: dict[str, float]):
    times = _load_times()
    times.update({k: round(v, 1) for k, v in new.items()})
    write_atomic(_times_path(), json.dumps(times, indent=0, sort_keys=True) + "\n")


def classify(result: KsftResult) -> str:
    """Whose the last attempt's failure is (``harness.failures``)."""
    last = result.attempts[-1]
    return classify_failure(last.output or "", reason=last.reason, splats=last.splats,
                            not_built=last.outcome == "not built")
