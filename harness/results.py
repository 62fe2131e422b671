"""A run's verdicts in the formats CI systems ingest, and shards' merged.

- ``nipa``: netdev CI's executor results (what its collector reads: one
  entry per run with ``executor``, ``branch``, ``start``, ``end``, and
  ``results``, each ``{test, group, result: pass|fail|skip, link, time}``).
- ``kcidb``: KernelCI's KCIDB JSON (a checkout, a build, a test per item),
  valid against the ``kcidb-io`` package's latest schema.
- JUnit: pytest's own ``--junitxml``; shards' files merged with junitparser.

Pure: verdicts in, documents out.  The pytest plugin gathers the verdicts.
"""
from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .util import HarnessError

FORMATS = ("nipa", "kcidb")
EXECUTOR = "netdev-harness"
ORIGIN = "netdev_harness"          # KCIDB: [a-z0-9_]+
# pytest's verdicts -> the formats' (an expected failure is not a pass of the code)
NIPA_RESULT = {"passed": "pass", "failed": "fail", "error": "fail", "skipped": "skip",
               "xfailed": "skip", "xpassed": "pass"}
KCIDB_STATUS = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP",
                "xfailed": "SKIP", "xpassed": "PASS"}


@dataclass(frozen=True)
class Verdict:
    """One test's outcome over its setup, call and teardown."""
    nodeid: str
    outcome: str            # a key of NIPA_RESULT
    start: float            # epoch seconds
    duration_s: float
    message: str = ""       # the failure's or skip's first line
    log: str = ""           # where its console slices are


def verdict_of(nodeid: str, phases: list[dict]) -> Verdict:
    """A test's verdict from its phases' reports (``when``, ``outcome``,
    ``start``, ``duration``, ``wasxfail``, ``message``), as pytest counts:
    a failed setup or teardown is an error, a failed call a failure."""
    by_when = {p["when"]: p for p in phases}
    outcome = "passed"
    if any(p["outcome"] == "failed" and p["when"] not in ("setup", "call", "teardown") for p in phases):
        outcome = "error"  # a collection error, or xdist's report of a crashed worker's test (when "???")
    for when in ("setup", "call", "teardown") if outcome == "passed" else ():
        p = by_when.get(when)
        if p is None:
            continue
        if p["outcome"] == "failed":
            outcome = "failed" if when == "call" else "error"
            break
        if p["outcome"] == "skipped":
            outcome = "xfailed" if "wasxfail" in p else "skipped"
            break
        if when == "call" and "wasxfail" in p:
            outcome = "xpassed"
    failing = next((p for p in phases if p["outcome"] != "passed"), None)
    starts = [p["start"] for p in phases if p["start"]] or [0.0]  # a crashed worker's report has none
    return Verdict(nodeid, outcome, min(starts), sum(p["duration"] for p in phases),
                   (failing or {}).get("message", ""), phases[0].get("log", ""))


def namify(text: str) -> str:
    """NIPA's test names: runs of anything but letters and digits -> '-'."""
    return re.sub(r"[^0-9a-zA-Z]+", "-", text).strip("-")


def group_and_name(nodeid: str) -> tuple[str, str]:
    """tests/behaviour/test_x.py::test_y[a] -> ("harness-behaviour", "test-x-test-y-a");
    a selftest item (net:foo.sh) -> ("selftests-net", "foo-sh")."""
    path, _, name = nodeid.partition("::")
    parts = Path(path).parts
    if len(parts) >= 2 and parts[0] == "tests":
        return f"harness-{parts[1]}" if len(parts) > 2 else "harness", namify(f"{Path(path).stem}-{name}")
    collection, sep, test = nodeid.partition(":")
    if sep and "/" not in collection:
        return f"selftests-{namify(collection)}", namify(test)
    return "harness", namify(nodeid)


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


def nipa(verdicts: Iterable[Verdict], *, branch: str, start: float, end: float, link: str = "") -> dict:
    """netdev CI's executor results for one run."""
    results = []
    for v in verdicts:
        group, test = group_and_name(v.nodeid)
        entry = {"test": test, "group": group, "result": NIPA_RESULT[v.outcome], "time": round(v.duration_s)}
        if v.log or link:
            entry["link"] = v.log or link
        results.append(entry)
    doc = {"executor": EXECUTOR, "branch": branch, "start": _iso(start), "end": _iso(end), "results": results}
    if link:
        doc["link"] = link
    return doc


def kcidb_path(nodeid: str) -> str:
    """A test's KCIDB path: dot-separated [a-zA-Z0-9_-] parts under netdev_harness."""
    group, test = group_and_name(nodeid)
    return f"{ORIGIN}.{group}.{test}"


def kcidb(verdicts: Iterable[Verdict], *, kernel_release: str, kernel_digest: str, start: float,
          accel: str, log_url: str = "") -> dict:
    """KCIDB JSON: the kernel as a checkout and a build, each test a test
    of that build."""
    key = re.sub(r"[^0-9a-zA-Z_.-]", "_", f"{kernel_release}-{kernel_digest[:16]}")
    checkout_id, build_id = f"{ORIGIN}:{key}", f"{ORIGIN}:{key}:build"
    tests = []
    for v in verdicts:
        test = {"id": f"{ORIGIN}:{key}:{int(start)}:{v.nodeid}", "build_id": build_id, "origin": ORIGIN,
                "path": kcidb_path(v.nodeid), "status": KCIDB_STATUS[v.outcome], "start_time": _iso(v.start),
                "duration": round(v.duration_s, 3), "comment": v.nodeid,
                "environment": {"comment": f"QEMU/libvirt guest, {accel}"}}
        if v.message:
            test["log_excerpt"] = v.message[:16384]
        if v.log or log_url:
            test["log_url"] = v.log or log_url
        tests.append(test)
    return {"version": {"major": 5, "minor": 3},
            "checkouts": [{"id": checkout_id, "origin": ORIGIN, "comment": f"kernel {kernel_release}",
                           "start_time": _iso(start)}],
            "builds": [{"id": build_id, "checkout_id": checkout_id, "origin": ORIGIN,
                        "architecture": "x86_64", "comment": kernel_release}],
            "tests": tests}


def render(fmt: str, verdicts: list[Verdict], **facts) -> dict:
    if fmt == "nipa":
        return nipa(verdicts, branch=facts["kernel_release"], start=facts["start"], end=facts["end"],
                    link=facts.get("link", ""))
    if fmt == "kcidb":
        return kcidb(verdicts, kernel_release=facts["kernel_release"], kernel_digest=facts["kernel_digest"],
                     start=facts["start"], accel=facts["accel"], log_url=facts.get("link", ""))
    raise HarnessError(f"--results-format {fmt}: expected one of {', '.join(FORMATS)}")


# -- shards: one report out of many ----------------------------------------------

def merge_nipa(docs: list[dict]) -> dict:
    """Shards of one run: their results in one entry, from the first start to the last end."""
    if not docs:
        raise HarnessError("merge: no nipa results to merge")
    merged = dict(docs[0])
    merged["start"] = min(d["start"] for d in docs)
    merged["end"] = max(d["end"] for d in docs)
    merged["results"] = [r for d in docs for r in d["results"]]
    return merged


def merge_kcidb(docs: list[dict]) -> dict:
    """Shards' KCIDB documents as one (the same checkout and build once)."""
    if not docs:
        raise HarnessError("merge: no kcidb results to merge")
    merged: dict = {"version": docs[0]["version"]}
    for kind in ("checkouts", "builds", "tests"):
        seen: dict[str, dict] = {}
        for d in docs:
            for obj in d.get(kind, []):
                seen.setdefault(obj["id"], obj)
        merged[kind] = list(seen.values())
    return merged


def read_json(path: Path, what: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise HarnessError(f"{path}: expected a {what} JSON file: {e}") from None
    if not isinstance(doc, dict):
        raise HarnessError(f"{path}: expected a {what} JSON object, got {type(doc).__name__}")
    return doc
