"""What an installed kselftest tree offers, read the way its own runner
(tools/testing/selftests/kselftest/runner.sh) reads it: `kselftest-list.txt`
names each test as `collection:test`, and a collection's `settings` file
sets `timeout=` (seconds; 45 when unset, 0 for none).  Pure text handling,
plus the order a pool runs tests in.

    tests = read_list(text, source="…/kselftest-list.txt")
    timeout = test_timeout(read_settings(settings_text), scale=4)
"""
from __future__ import annotations

import dataclasses

from ..util import HarnessError

DEFAULT_TIMEOUT_S = 45  # runner.sh: kselftest_default_timeout


@dataclasses.dataclass(frozen=True)
class Selftest:
    collection: str  # "net", "net/forwarding", "drivers/net"
    name: str        # the program in that collection: "rps_default_mask.sh"

    @property
    def id(self) -> str:
        return f"{self.collection}:{self.name}"


def read_list(text: str, source: str = "kselftest-list.txt") -> list[Selftest]:
    """Every `collection:test` line, in the file's order (duplicates once)."""
    tests: list[Selftest] = []
    seen: set[Selftest] = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        collection, sep, name = line.partition(":")
        if not sep or not collection or not name or ":" in name or "/" in name:
            raise HarnessError(f"{source}:{number}: expected 'collection:test' (e.g. net:rps_default_mask.sh), "
                               f"got {line!r}")
        test = Selftest(collection, name)
        if test not in seen:
            seen.add(test)
            tests.append(test)
    return tests


def select(tests: list[Selftest], targets: list[str]) -> list[Selftest]:
    """The tests of the named collections (`net` does not include
    `net/forwarding`: kselftest's TARGETS are exact collections)."""
    known = {t.collection for t in tests}
    missing = [t for t in targets if t not in known]
    if missing:
        raise HarnessError(f"--ksft {','.join(targets)}: no collection {', '.join(missing)} in the installed "
                           f"selftests (have: {', '.join(sorted(known)) or 'none'})")
    return [t for t in tests if t.collection in targets]


def read_settings(text: str, source: str = "settings") -> dict[str, str]:
    """`field=value` lines (comments skipped), as runner.sh evals them."""
    settings: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        field, sep, value = line.partition("=")
        if not sep or not field.strip():
            raise HarnessError(f"{source}:{number}: expected 'field=value', got {line!r}")
        settings[field.strip()] = value.strip()
    return settings


def test_timeout(settings: dict[str, str], scale: float = 1.0, source: str = "settings") -> float | None:
    """The per-test timeout in seconds, stretched by ``scale`` (slow
    machines: TCG, KASAN); None when the collection sets none (0)."""
    raw = settings.get("timeout", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = int(raw)
    except ValueError:
        raise HarnessError(f"{source}: timeout={raw!r}: expected whole seconds") from None
    if seconds < 0:
        raise HarnessError(f"{source}: timeout={raw!r}: expected 0 (none) or more seconds")
    return None if seconds == 0 else seconds * scale


def longest_first(tests: list[Selftest], previous_s: dict[str, float]) -> list[Selftest]:
    """The order a pool of guests takes tests in: the longest previous run
    first (so one slow test does not finish alone at the end); tests never
    run before go first of all, in list order (their length is unknown)."""
    unknown = [t for t in tests if t.id not in previous_s]
    known = sorted((t for t in tests if t.id in previous_s), key=lambda t: -previous_s[t.id])
    return unknown + known
