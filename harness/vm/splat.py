"""Kernel splats in a console log: which lines open one, and the text of each.

Pure text handling, no I/O, so it is tested against real splats.
"""
from __future__ import annotations

import dataclasses
import re

# (kind, pattern) in the order they are tried; the first match names the splat.
OPENERS = [
    ("panic", r"Kernel panic - not syncing"),
    ("unregister_netdevice", r"unregister_netdevice: waiting for \S+ to become free"),
    ("hung_task", r"INFO: task \S.* blocked for more than \d+ seconds"),
    ("rcu_stall", r"rcu: INFO: \w+ (detected|self-detected) (expedited )?stalls?"
                  r"|\brcu_\w+ (self-)?detected stalls?"),
    # lockdep's reports: a "WARNING: <what>" title under a ===== rule
    ("lockdep", r"possible circular locking dependency|possible recursive locking detected"
                r"|inconsistent lock state|suspicious RCU usage|bad unlock balance detected"
                r"|lock held when returning to user space|held lock freed|nested lock was not taken"
                r"|possible irq lock inversion dependency|\S+-safe -> \S+-unsafe lock order detected"
                r"|lock held at task exit time"),
    ("list_corruption", r"\blist_(add|del) corruption"),
    ("kasan", r"\bKASAN:"),
    ("ubsan", r"\bUBSAN:"),
    ("refcount", r"\brefcount_t: "),
    ("kernel_bug", r"kernel BUG at "),
    ("gpf", r"general protection fault"),
    ("oops", r"\bOops\b"),
    ("bug", r"\bBUG: "),
    # WARN(): "WARNING: CPU: 1 PID: 412 at ...", older "WARNING: at ..."; not a
    # driver's own "pktgen: WARNING: ..." message
    ("warning", r"(^|\]\s)WARNING: (CPU: \d+ PID:|at )"),
    ("hard_lockup", r"Watchdog detected hard LOCKUP"),
]
_OPENER_RE = [(kind, re.compile(p)) for kind, p in OPENERS]
_END_RE = re.compile(r"---\[ end (trace [0-9a-f]+|Kernel panic)")
_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")
MAX_LINES = 120  # a splat without an end marker is cut here
MAX_LINE = 1024  # characters of a line kept in a splat
MAX_SPLATS_PER_KIND = 50  # a WARN in a hot path prints thousands: the first are kept, the rest counted


_STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]")


def _stamp(line: str) -> float | None:
    m = _STAMP.match(line)
    return float(m.group(1)) if m else None


def opener(line: str) -> str | None:
    """The kind of splat ``line`` opens, or None."""
    for kind, rx in _OPENER_RE:
        if rx.search(line):
            return kind
    return None


def is_panic(line: str) -> bool:
    return "Kernel panic - not syncing" in line


@dataclasses.dataclass
class Splat:
    kind: str
    line_no: int          # index of the opening line in the console log
    lines: list[str]
    ended: bool = False

    @property
    def title(self) -> str:
        return _TIMESTAMP.sub("", self.lines[0]).strip()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self):
        return f"{self.kind}: {self.title}"


class SplatScanner:
    """Feed console lines in order; collects splats as they appear.

    Lines that open a splat while another is still open (a BUG inside a
    WARNING's trace, the panic after an oops) belong to the open one, except
    a panic, which always gets its own entry so it can stop a run at once.
    A splat without an end marker (lockdep's reports have none) ends at a
    harness mark, or when the next line comes more than a second after its
    last one (the kernel prints a report in one go).
    """

    def __init__(self):
        self.splats: list[Splat] = []
        self.dropped: dict[str, int] = {}  # kind -> splats seen past MAX_SPLATS_PER_KIND
        self._kinds: dict[str, int] = {}
        self._open: Splat | None = None
        self._open_at: float | None = None  # the open splat's last timestamp
        self._line_no = 0

    def feed(self, line: str) -> Splat | None:
        """Returns the splat ``line`` opened, if any."""
        n = self._line_no
        self._line_no += 1
        stamp = _stamp(line)
        current = self._open
        if current is not None and ("harness-mark-" in line or (
                stamp is not None and self._open_at is not None and stamp - self._open_at > 1.0)):
            current.ended = True
            self._open = current = None
        if current is not None and stamp is not None:
            self._open_at = stamp
        if current is not None:
            current.lines.append(line[:MAX_LINE])
            if _END_RE.search(line) or len(current.lines) >= MAX_LINES:
                current.ended = True
                self._open = None
            if is_panic(line) and current.kind != "panic":
                panic = Splat("panic", n, [line])
                self.splats.append(panic)
                return panic
            return None
        kind = opener(line)
        if kind is None:
            return None
        splat = Splat(kind, n, [line[:MAX_LINE]])
        self._kinds[kind] = self._kinds.get(kind, 0) + 1
        if self._kinds[kind] > MAX_SPLATS_PER_KIND and kind != "panic":
            self.dropped[kind] = self.dropped.get(kind, 0) + 1
            return None  # seen, counted, not kept: the first ones already fail the test
        self.splats.append(splat)
        if kind != "unregister_netdevice":  # a one-line message, repeated every 10 s
            self._open, self._open_at = splat, stamp
        return splat


def find_splats(text: str) -> list[Splat]:
    scanner = SplatScanner()
    for line in text.splitlines():
        scanner.feed(line)
    return scanner.splats
