"""The words tests are written in, so that a test reads like the patch it
checks (the kernel selftests' ``net/lib/py`` has ``cmd``, ``ip(json=True)``
and ``defer`` for the same reason):

    with counting(guest) as d:          # a snapshot before, one after
        result = steered.send(N)
    d.softnet[1].processed, d.link("eth0").rx.packets

    processed = total(delta(before, softnet(guest)), "processed")
    took = wait_gone(guest, "veth0", timeout=10 * guest.time_scale)

``backlog_mode`` (measure.backlog) and the ``defer`` fixture (the plugin)
belong to the same vocabulary.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from .endpoint import Endpoint
from .measure.observe import snapshot


def delta(before: Any, after: Any) -> Any:
    """``after - before`` of any snapshot: a ``Snapshot`` (counters
    differenced, gauges the later value), a ``{cpu: SoftnetRow}`` or any
    mapping of such values (the keys both have; a CPU that went offline
    meanwhile is left out), or a number."""
    if isinstance(after, Mapping):
        return {key: delta(before[key], value) for key, value in after.items() if key in before}
    return after - before


def column(rows: Mapping, name: str) -> dict:
    """``{key: row.<name>}``: one counter of every CPU's row."""
    return {key: getattr(row, name) for key, row in rows.items()}


def total(rows: Mapping, *names: str) -> int:
    """The sum of counters ``names`` over every row."""
    return sum(getattr(row, name) for row in rows.values() for name in names)


class Counting:
    """``with counting(where) as d:`` -- what changed over the block; read
    ``d``'s attributes (a ``Snapshot`` delta's) once the block has ended."""

    def __init__(self, take: Callable[[], Any]):
        self._take = take
        self._before: Any = None
        self._delta: Any = None

    def __enter__(self) -> Counting:
        self._before = self._take()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self._delta = delta(self._before, self._take())

    @property
    def delta(self) -> Any:
        if self._delta is None:
            raise RuntimeError("counting: the delta is read inside its block, before the second snapshot")
        return self._delta

    def __getattr__(self, name: str) -> Any:
        return getattr(self.delta, name)

    def __getitem__(self, key: Any) -> Any:
        return self.delta[key]


def counting(where: Endpoint, take: Callable[[Endpoint], Any] = snapshot) -> Counting:
    """A snapshot of ``where`` (``take``: ``snapshot``, ``softnet``, ...)
    before the block and one after it; the block's delta."""
    return Counting(lambda: take(where))


def wait_until(check: Callable[[], Any], *, timeout: float, interval: float = 0.05) -> float:
    """Poll ``check()`` until it is true or ``timeout`` seconds have passed;
    the seconds waited.  The caller asserts on them (or on its state), so a
    failure names what was waited for and how long."""
    t0 = time.monotonic()
    while not check() and time.monotonic() - t0 < timeout:
        time.sleep(interval)
    return time.monotonic() - t0


def exists(where: Endpoint, ifname: str) -> bool:
    """Whether network device ``ifname`` exists in ``where``'s namespace."""
    return where.run(f"test -e /sys/class/net/{ifname}").rc == 0


def wait_gone(where: Endpoint, ifname: str, *, timeout: float) -> float:
    """Seconds until device ``ifname`` is gone from ``where`` (at most ``timeout``)."""
    return wait_until(lambda: not exists(where, ifname), timeout=timeout)
