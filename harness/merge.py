"""`harness merge`: the results of a run's shards (``--shard K/N`` on
several machines) as the one run's.

Each input is a file or a directory searched for them: JUnit XML (pytest's
``--junitxml``, merged with junitparser), ``results-nipa.json`` and
``results-kcidb.json`` (``--results-format``), ``mutants.json`` (``harness
mutants --shard``), ``ksft.json`` (``harness ksft --shard``), never what a report's own runs
wrote below it.  A test or a mutant found in two shards is an error: a
split covers each exactly once.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from junitparser import JUnitXml, JUnitXmlError, TestSuite

from . import results
from .catching.runs import MutantReport
from .ksft.runner import FAILING
from .util import HarnessError, write_atomic

KINDS = ("junit", "nipa", "kcidb", "mutants", "ksft")


def kind_of(path: Path) -> str | None:
    if path.name == "results-nipa.json":
        return "nipa"
    if path.name == "results-kcidb.json":
        return "kcidb"
    if path.name == "mutants.json":
        return "mutants"
    if path.name == "ksft.json":
        return "ksft"
    if path.suffix == ".xml":
        return "junit"
    return None


# A directory that holds one of these is a report: its own result files are
# at its top, and what lies below are the runs it was made of (a mutant's
# JUnit, a test's own ksft.json or mutants.json), never a shard's results.
# run.json marks a pytest run's log directory (the harness plugin writes it;
# results-*.json mark one made before it did).
REPORTS = ("mutants.json", "ksft.json", "run.json", "results-nipa.json", "results-kcidb.json")


def result_files(top: Path) -> Iterator[Path]:
    """The result files in ``top`` and its subdirectories, down to the first
    report directory on each branch, in name order."""
    try:
        entries = sorted(top.iterdir())
    except OSError as e:
        raise HarnessError(f"{top}: cannot read the directory: {e.strerror}") from None
    yield from (p for p in entries if p.is_file() and kind_of(p) is not None)
    if any((top / name).is_file() for name in REPORTS):
        return
    for sub in entries:
        # logs/latest links to a run directory (a copy of it once uploaded as an artifact)
        if sub.is_dir() and not sub.is_symlink() and sub.name != "latest":
            yield from result_files(sub)


def found_files(inputs: list[Path]) -> dict[str, list[Path]]:
    """The inputs' result files by kind: a file given, or a directory's (result_files)."""
    found: dict[str, list[Path]] = {k: [] for k in KINDS}
    for path in inputs:
        if path.is_dir():
            candidates: Iterator[Path] = result_files(path)
        elif path.is_file():
            candidates = iter([path])
        else:
            raise HarnessError(f"{path}: no such file or directory")
        for candidate in candidates:
            kind = kind_of(candidate)
            if kind is not None and candidate not in found[kind]:
                found[kind].append(candidate)
    if not any(found.values()):
        raise HarnessError(f"{', '.join(map(str, inputs))}: no JUnit XML, results-*.json, mutants.json or "
                           "ksft.json found")
    return found


def merge_junit(paths: list[Path]) -> JUnitXml:
    merged = JUnitXml()
    seen: dict[str, Path] = {}
    for path in paths:
        try:
            xml = JUnitXml.fromfile(str(path))
        except (JUnitXmlError, OSError, ValueError, SyntaxError) as e:  # lxml's XMLSyntaxError is one
            raise HarnessError(f"{path}: expected a JUnit XML file: {e}") from None
        suites = [xml] if isinstance(xml, TestSuite) else list(xml)
        for suite in suites:
            for case in suite:
                key = f"{case.classname}::{case.name}"
                # one file may name a test twice (a call and a teardown that both failed)
                if seen.get(key, path) != path:
                    raise HarnessError(f"{path}: test {key} is in {seen[key]} too: the shards overlap")
                seen[key] = path
            merged.add_testsuite(suite)
    merged.update_statistics()
    return merged


def merge_shards(inputs: list[Path], out: Path) -> tuple[list[tuple[Path, str]], bool]:
    """Write the merged files into ``out``: [(path, summary)], and whether
    anything failed (a failed test, a surviving mutant)."""
    found = found_files(inputs)
    out.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, str]] = []
    failed = False
    if found["junit"]:
        merged = merge_junit(found["junit"])
        path = out / "junit.xml"
        merged.write(str(path))
        bad = merged.failures + merged.errors
        failed |= bad > 0
        written.append((path, f"{merged.tests} tests from {len(found['junit'])} files: {merged.failures} failed, "
                              f"{merged.errors} errors, {merged.skipped} skipped"))
    for fmt, merge in (("nipa", results.merge_nipa), ("kcidb", results.merge_kcidb)):
        if found[fmt]:
            docs = [results.read_json(p, f"{fmt} results") for p in found[fmt]]
            doc = merge(docs)
            path = out / f"results-{fmt}.json"
            write_atomic(path, json.dumps(doc, indent=1) + "\n")
            count = len(doc["results"] if fmt == "nipa" else doc["tests"])
            written.append((path, f"{count} tests from {len(docs)} shards"))
    if found["mutants"]:
        reports = [MutantReport.from_json(results.read_json(p, "mutants"), str(p)) for p in found["mutants"]]
        report = MutantReport.merge(reports, [str(p) for p in found["mutants"]])
        report.write(out)
        failed |= bool(report.survivors)
        totals = ", ".join(f"{n} {s}" for s, n in report.to_json()["totals"].items() if n and s != "mutants")
        written.append((out / "mutants.json", f"{len(report.results)} mutants from {len(reports)} shards: {totals}"))
    if found["ksft"]:
        docs = [results.read_json(p, "ksft") for p in found["ksft"]]
        doc = merge_ksft(docs, [str(p) for p in found["ksft"]])
        path = out / "ksft.json"
        write_atomic(path, json.dumps(doc, indent=1) + "\n")
        failed |= any(t["outcome"] in FAILING for t in doc["tests"])
        counts = ", ".join(f"{n} {o}" for o, n in sorted(doc["counts"].items()))
        written.append((path, f"{len(doc['tests'])} selftests from {len(docs)} shards: {counts}"))
    return written, failed


def merge_ksft(docs: list[dict], where: list[str]) -> dict:
    """Shards of one `harness ksft` run: the same kernel and selftests, each test once."""
    first = docs[0]
    seen: dict[str, str] = {}
    tests = []
    for doc, w in zip(docs, where, strict=True):
        if (doc.get("kernel"), doc.get("source")) != (first.get("kernel"), first.get("source")):
            raise HarnessError(f"{w}: selftests of {doc.get('source')} on {doc.get('kernel')}, not of "
                               f"{first.get('source')} on {first.get('kernel')} as {where[0]}")
        for test in doc.get("tests", []):
            if test["test"] in seen:
                raise HarnessError(f"{w}: selftest {test['test']} is in {seen[test['test']]} too: the shards overlap")
            seen[test["test"]] = w
            tests.append(test)
    counts: dict[str, int] = {}
    for test in tests:
        counts[test["outcome"]] = counts.get(test["outcome"], 0) + 1
    return {**first, "wall_s": max(d.get("wall_s", 0.0) for d in docs), "counts": counts, "tests": tests,
            "build_failures": sorted({f for d in docs for f in d.get("build_failures", [])})}
