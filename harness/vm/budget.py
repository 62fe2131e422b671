"""The host's budget of vCPUs and memory, shared by every harness process.

Under TCG a vCPU is a host thread that wants a core of its own: two pytest
workers (``-n 2``) or two runs whose guests together want more vCPUs than
the host has make each other's timing-sensitive tests flake.  A guest holds
its share from boot to stop; a process whose guest would oversubscribe the
host waits for the others' guests to stop.

One file per holding under RUN_ROOT (``budget-<pid>-<n>.json``: vCPUs,
memory, group), changed under an flock of RUN_ROOT itself, so a killed
holder's share is free as soon as its pid is gone (and its file is reaped).
Rules that keep it from deadlocking:

- a process never waits on its own holdings, nor on its group's (a run and
  the child pytest it starts to hold a second lab beside its own: the child
  inherits HARNESS_BUDGET_GROUP);
- a request bigger than the whole host is granted when nothing else holds;
- when every holder in the way is itself waiting for room that is not
  there, the oldest of those holders goes ahead (logged: the host is
  oversubscribed for a while rather than stuck).  A process that holds
  nothing is in no one's way, and waits.

A holder is alive while its pid runs the process that wrote the share
(its start time is recorded: a reused pid is not it; a zombie is gone).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..util import RUN_ROOT, HarnessError, locked_dir, owner_alive, pid_alive, process_start

log = logging.getLogger(__name__)

GROUP_ENV = "HARNESS_BUDGET_GROUP"
VCPUS_ENV, MEMORY_ENV = "HARNESS_BUDGET_VCPUS", "HARNESS_BUDGET_MEMORY_MB"
_HOLDING = re.compile(r"budget-(\d+)-(\d+)\.json")
_WAITING = re.compile(r"budget-wait-(\d+)-(\d+)\.json")
POLL_S = 0.5
_numbers = itertools.count(1)
_local = threading.Lock()  # threads of one process (a lab boots its guests in threads)


@dataclass(frozen=True)
class Capacity:
    vcpus: int
    memory_mb: int

    @classmethod
    def of_host(cls) -> Capacity:
        """The host's cores and three quarters of its memory, unless
        HARNESS_BUDGET_VCPUS / HARNESS_BUDGET_MEMORY_MB say otherwise."""
        return cls(_env_int(VCPUS_ENV) or len(os.sched_getaffinity(0)),
                   _env_int(MEMORY_ENV) or _mem_total_mb() * 3 // 4)


@dataclass(frozen=True)
class Share:
    pid: int
    group: int
    vcpus: int
    memory_mb: int
    what: str = ""
    start: int | None = None     # the holder's start time (harness.util.process_start)

    @property
    def age(self) -> tuple[int, int]:
        """Sorts the oldest process first (pids wrap; start times do not)."""
        return (self.start if self.start is not None else 0, self.pid)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if not value.isdigit() or int(value) < 1:
        raise HarnessError(f"{name}={value!r}: expected a positive whole number")
    return int(value)


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise HarnessError("/proc/meminfo: no MemTotal line")


def group() -> int:
    """This process's budget group: inherited from the process that started
    it, else its own pid (set in the environment for its children)."""
    value = os.environ.get(GROUP_ENV, "")
    if value.isdigit() and pid_alive(int(value)):
        return int(value)
    os.environ[GROUP_ENV] = str(os.getpid())
    return os.getpid()


def fits(request: Share, held: list[Share], waiting: list[Share], capacity: Capacity) -> bool:
    """Whether ``request`` may go ahead beside ``held`` (every live share,
    the requester's own included) and ``waiting`` (the other live
    requests).  Pure: the rules of the module's docstring."""
    if _room_for(request, held, capacity):
        return True
    holders = {s.group for s in held}
    if request.group not in holders:
        return False  # it holds nothing: no one waits on it
    in_the_way = holders - {request.group}
    blocked = [w for w in waiting if w.group in in_the_way]
    if {w.group for w in blocked} != in_the_way or any(_room_for(w, held, capacity) for w in blocked):
        return False  # a holder in the way is running (or about to): it will release
    # every holder in the way waits on the others: the oldest goes ahead
    return all(request.age <= w.age for w in blocked)


def _room_for(request: Share, held: list[Share], capacity: Capacity) -> bool:
    others = [s for s in held if s.group != request.group]
    return not others or (sum(s.vcpus for s in others) + request.vcpus <= capacity.vcpus
                          and sum(s.memory_mb for s in others) + request.memory_mb <= capacity.memory_mb)


class Budget:
    """The host's vCPUs and memory: hold(vcpus, memory_mb) -> a release()."""

    def __init__(self, root: Path = RUN_ROOT, capacity: Capacity | None = None):
        self.root = Path(root)
        self.capacity = capacity or Capacity.of_host()

    def hold(self, vcpus: int, memory_mb: int, what: str = "") -> Holding:
        """Wait for room and take it: request(...).wait()."""
        holding = self.request(vcpus, memory_mb, what)
        holding.wait()
        return holding

    def request(self, vcpus: int, memory_mb: int, what: str = "") -> Holding:
        """A share not yet taken: its wait() takes it, its release() (from
        any thread, also while another waits) gives it back or withdraws it."""
        share = Share(os.getpid(), group(), vcpus, memory_mb, what, process_start(os.getpid()))
        return Holding(self, share, next(_numbers))

    def _read(self, exclude: Path) -> tuple[list[Share], list[Share]]:
        """The live shares and waiting requests; dead processes' files go."""
        reap_shares(self.root)
        held: list[Share] = []
        waiting: list[Share] = []
        for path in share_owners(self.root):
            share = _share_in(path)
            if path == exclude or share is None:
                continue
            (held if _HOLDING.fullmatch(path.name) else waiting).append(share)
        return held, waiting


def _share_in(path: Path) -> Share | None:
    try:
        return Share(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # gone meanwhile, or cut short by a SIGKILL (its pid decides)


def share_owners(root: Path = RUN_ROOT) -> dict[Path, int]:
    """Every share or wait file under ``root`` and the pid it names."""
    found = {}
    if root.is_dir():
        for path in root.iterdir():
            m = _HOLDING.fullmatch(path.name) or _WAITING.fullmatch(path.name)
            if m is not None:
                found[path] = int(m.group(1))
    return found


def reap_shares(root: Path = RUN_ROOT) -> list[str]:
    """The shares and waits of processes that are gone (a killed run's, a
    crashed worker's zombie): free already, their files go too."""
    reaped = []
    for path, pid in share_owners(root).items():
        share = _share_in(path)
        if not owner_alive(pid, share.start if share is not None and share.pid == pid else None):
            path.unlink(missing_ok=True)
            reaped.append(str(path))
    return reaped


class Holding:
    """A guest's share of the host: waited for, then held until released
    (stop, a failed boot).  A release while another thread waits (a lab's
    guest stopped during its boot) withdraws the request at once."""

    def __init__(self, budget: Budget, share: Share, n: int):
        self.budget, self.share = budget, share
        self.path = budget.root / f"budget-{share.pid}-{n}.json"
        self.wait_path = budget.root / f"budget-wait-{share.pid}-{n}.json"
        self.waited_s = 0.0
        self._released = False

    def wait(self) -> None:
        budget, request, what = self.budget, self.share, self.share.what or "a guest"
        record = json.dumps(request.__dict__)
        started = time.monotonic()
        said = -60.0
        try:
            while True:
                # files are written and read under the directory's flock: never seen half written
                with _local, locked_dir(budget.root):
                    if self._released:
                        raise BudgetWithdrawn(f"{what}: stopped while it waited for the host budget")
                    held, waiting = budget._read(exclude=self.wait_path)
                    if fits(request, held, waiting, budget.capacity):
                        if not _room_for(request, held, budget.capacity):
                            log.warning("%s: holders waiting on each other; the oldest, this one, goes ahead "
                                        "and the host is oversubscribed for a while", what)
                        self.path.write_text(record)
                        self.wait_path.unlink(missing_ok=True)
                        break
                    if not self.wait_path.exists():
                        self.wait_path.write_text(record)
                waited = time.monotonic() - started
                if waited - said >= 60:
                    said = waited
                    others = sorted({s.pid for s in held if s.group != request.group})
                    log.info("%s waits for the host budget (%d vCPUs, %d MiB in all): pid %s hold it (%.0f s)",
                             what, budget.capacity.vcpus, budget.capacity.memory_mb,
                             ", ".join(map(str, others)), waited)
                time.sleep(POLL_S)
        except BaseException:
            self.wait_path.unlink(missing_ok=True)
            raise
        self.waited_s = time.monotonic() - started
        if self.waited_s > 1:
            log.info("%s: waited %.1f s for the host budget", what, self.waited_s)

    def release(self) -> None:
        """Give the share back, or withdraw the request: both files go now
        (under the flock, so a waiting thread cannot write one after)."""
        with _local, locked_dir(self.budget.root):
            self._released = True
            self.path.unlink(missing_ok=True)
            self.wait_path.unlink(missing_ok=True)


class BudgetWithdrawn(HarnessError):
    pass


def auto_workers(capacity: Capacity, vcpus_per_guest: int, memory_per_guest_mb: int) -> int:
    """How many pytest workers (``-n auto``) the budget keeps busy: each
    runs one default guest at a time."""
    return max(1, min(capacity.vcpus // max(1, vcpus_per_guest),
                      capacity.memory_mb // max(1, memory_per_guest_mb)))
