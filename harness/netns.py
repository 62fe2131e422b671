"""Calls inside a named network namespace (/run/netns/NAME) without a fork
or an exec: a thread of its own joins it (setns(2) changes that thread
only), so a multi-threaded process stays whole.  The lab's plumbing and the
traffic instruments share these; they know nothing of labs."""
from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pyroute2 import IPRoute, netns

T = TypeVar("T")


def in_thread(fn: Callable[[], T], name: str) -> T:
    """fn() in a thread of its own (namespace calls change only that
    thread), its result returned or its exception raised here."""
    box: Any = {}  # "result" (a T) or "error"

    def work() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    thread = threading.Thread(target=work, name=name)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")


def in_netns_call(name: str, fn: Callable[[], T]) -> T:
    """fn() run in a thread that joined namespace ``name`` (setns(2), that
    thread only; pyroute2's own NetNS forks this multi-threaded process)."""
    def joined() -> T:
        netns.setns(name, flags=0, fork=False)
        return fn()

    return in_thread(joined, f"netns:{name}")


CLONE_NEWNET = 0x40000000


def create_namespace(name: str) -> None:
    """``ip netns add NAME`` without a fork or an exec: a thread unshares a
    network namespace of its own and binds it at /run/netns/NAME (failing
    if that exists)."""
    def make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"unshare(CLONE_NEWNET) for namespace {name}")
        netns.attach(name, f"self/task/{threading.get_native_id()}")

    in_thread(make, f"netns-add:{name}")


def in_netns(name: str, fn: Callable[[IPRoute], T]) -> T:
    """fn(ipr) with an IPRoute inside namespace ``name``."""

    def with_iproute() -> T:
        with IPRoute() as ipr:
            return fn(ipr)

    return in_netns_call(name, with_iproute)
