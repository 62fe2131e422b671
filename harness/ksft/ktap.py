"""KTAP / TAP output of the kernel's selftests, as kselftest's runner
prints it: the runner's own result lines at depth 0, each test's output
below them prefixed with "# ", and any KTAP a test prints itself nested one
"# " (or four spaces) deeper per level.  Pure text handling.

    results = parse(text)                  # every result line, any depth
    top = [r for r in results if r.depth == 0]
    top[0].outcome                         # "pass", "fail", "skip", "xfail", "timeout"
"""
from __future__ import annotations

import dataclasses
import re

_RESULT = re.compile(r"^(?P<ok>ok|not ok)\s+(?P<num>\d+)(?:\s+-)?\s*(?P<desc>[^#]*?)\s*"
                     r"(?:#\s*(?P<directive>SKIP|TODO|XFAIL|TIMEOUT|XPASS)?\b:?\s*(?P<reason>.*))?$",
                     re.IGNORECASE)
_PREFIX = re.compile(r"^(# ?|    )")


@dataclasses.dataclass(frozen=True)
class TapResult:
    name: str
    number: int | None
    ok: bool
    directive: str | None      # SKIP, XFAIL, TODO, TIMEOUT (upper case) or None
    reason: str                # what follows the directive (or the "#" when there is none)
    depth: int                 # 0: the runner's line; 1: a test's own; ...
    line: int                  # index in the text's lines

    @property
    def outcome(self) -> str:
        if self.directive == "TIMEOUT":
            return "timeout"
        if self.directive == "SKIP":
            return "skip"
        if self.directive in ("XFAIL", "TODO"):
            return "xfail"
        return "pass" if self.ok else "fail"


def strip_prefixes(line: str) -> tuple[int, str]:
    """(depth, text): how many "# " (or four-space) prefixes nest the line.
    A prefix counts as nesting when a result, a version or plan line, or
    another prefix follows it; before anything else it marks a diagnostic
    of the level it is on."""
    depth = 0
    while True:
        m = _PREFIX.match(line)
        if not m:
            return depth, line
        rest = line[m.end():]
        if not (_RESULT.match(rest) or _PREFIX.match(rest) or rest.startswith(("TAP version", "KTAP version", "1.."))):
            return depth, line
        depth, line = depth + 1, rest


def parse(text: str) -> list[TapResult]:
    out = []
    for i, raw in enumerate(text.splitlines()):
        depth, line = strip_prefixes(raw.rstrip())
        m = _RESULT.match(line)
        if not m:
            continue
        directive = (m.group("directive") or "").upper() or None
        out.append(TapResult(m.group("desc").strip(), int(m.group("num")) if m.group("num") else None,
                             m.group("ok") == "ok", directive, (m.group("reason") or "").strip(), depth, i))
    return out


def output_of(text: str, result: TapResult) -> list[str]:
    """The "# "-prefixed lines a test printed before its runner result line
    (back to the previous depth-0 result), prefixes removed once."""
    lines = text.splitlines()[:result.line]
    out: list[str] = []
    for line in reversed(lines):
        if _RESULT.match(line):
            break
        if line.startswith("#"):  # not the runner's plan or version lines
            out.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
    return list(reversed(out))


def skip_reason(text: str, result: TapResult) -> str:
    """Why a test skipped: the runner's reason if it gives one, else the
    last line of the test's own output that says SKIP (exit 4 tests print
    it themselves), else its last line."""
    if result.reason:
        return result.reason
    # the runner's own lines ("selftests: net: x.sh", its timeout) are not the test's word
    output = [l.strip() for l in output_of(text, result)
              if l.strip() and not l.strip().startswith(("selftests:", "timeout set to", "overriding timeout to"))]
    for line in reversed(output):
        if "skip" in line.lower():
            return line
    return output[-1] if output else ""
