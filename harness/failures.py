"""Whose a failure is, read from what the run left behind: one classifier for
the kernel selftests' attempts and the suite's JUnit failures alike."""
from __future__ import annotations

import re
from collections.abc import Sequence

KERNEL, KERNEL_CONFIG, MISSING_TOOL, HARNESS = "kernel", "kernel config", "missing tool", "harness"

# the kernel lacks a module, a qdisc, a device type or a /proc file its tests need
_KERNEL_CONFIG = re.compile(r"Module \S+ not found|modprobe: FATAL|not found in directory|"
                            r"Unknown (qdisc|device type)|Operation not supported|"
                            r"No such file or directory: '/proc/net/pktgen")
_MISSING_TOOL = re.compile(r"command not found|: not found$|could not run test without|not installed|"
                           r"cannot find (?:the )?\S+ (?:tool|binary|command)|requires? (?:the )?\S+ (?:tool|binary)",
                           re.IGNORECASE | re.MULTILINE)
# a reason that says the test itself gave no verdict
_HARNESS_REASONS = ("harness:", "no kselftest result line")


def classify_failure(text: str = "", *, reason: str = "", splats: Sequence = (), not_built: bool = False) -> str:
    """``KERNEL`` (a splat, or the test ran and the kernel did not do what it
    checks), ``KERNEL_CONFIG`` (the kernel lacks what the test needs),
    ``MISSING_TOOL`` (a program or a build dependency the host lacks) or
    ``HARNESS`` (no verdict from the test itself: the guest would not boot,
    the runner printed no result).  ``text`` is the failure's output or
    message, ``reason`` its one-line story."""
    if splats:
        return KERNEL
    if not_built:
        return MISSING_TOOL
    if _KERNEL_CONFIG.search(text):
        return KERNEL_CONFIG
    if _MISSING_TOOL.search(text):
        return MISSING_TOOL
    if reason.startswith(_HARNESS_REASONS):
        return HARNESS
    return KERNEL
