"""Results in netdev CI's and KernelCI's formats, and shards merged
(harness.results, harness.merge): documents checked against the formats'
own schema where one exists (kcidb-io), and a real pytest run split into
shards whose merged JUnit equals the unsharded run's."""
import json
import subprocess
import sys
import textwrap

import pytest
from junitparser import JUnitXml
from kcidb_io import schema

from harness import results
from harness.catching.runs import MutantReport, MutantResult
from harness.merge import merge_shards
from harness.util import HarnessError


def phase(when, outcome, **kw):
    return {"when": when, "outcome": outcome, "start": 1000.0, "duration": 1.5, **kw}


@pytest.mark.parametrize("phases, outcome", [
    ([phase("setup", "passed"), phase("call", "passed"), phase("teardown", "passed")], "passed"),
    ([phase("setup", "passed"), phase("call", "failed"), phase("teardown", "failed")], "failed"),
    ([phase("setup", "failed"), phase("teardown", "passed")], "error"),
    ([phase("setup", "passed"), phase("call", "passed"), phase("teardown", "failed")], "error"),
    ([phase("setup", "skipped"), phase("teardown", "passed")], "skipped"),
    ([phase("setup", "passed"), phase("call", "skipped", wasxfail=""), phase("teardown", "passed")], "xfailed"),
    ([phase("setup", "passed"), phase("call", "passed", wasxfail=""), phase("teardown", "passed")], "xpassed"),
    ([phase("???", "failed", start=0)], "error"),            # xdist: the worker running it crashed
    ([phase("collect", "failed")], "error"),                 # the file did not import
])
def test_a_verdict_counts_as_pytest_does(phases, outcome):
    v = results.verdict_of("tests/unit/test_x.py::test_y", phases)
    assert v.outcome == outcome
    assert v.duration_s == 1.5 * len(phases)
    assert v.start == (1000.0 if phases[0]["start"] else 0.0)


def test_names_follow_nipa_and_kcidb_rules():
    assert results.group_and_name("tests/behaviour/test_ring_drops.py::test_full_ring[4]") == (
        "harness-behaviour", "test-ring-drops-test-full-ring-4")
    assert results.group_and_name("net:udpgso.sh") == ("selftests-net", "udpgso-sh")
    assert results.kcidb_path("tests/unit/test_a.py::test_b[x-y]") == "netdev_harness.harness-unit.test-a-test-b-x-y"


VERDICTS = [results.Verdict("tests/behaviour/test_a.py::test_pass", "passed", 1000.0, 3.2),
            results.Verdict("tests/behaviour/test_a.py::test_fail", "failed", 1004.0, 1.0, "AssertionError: 3 != 4"),
            results.Verdict("tests/harness/test_b.py::test_skip", "skipped", 1005.0, 0.0, "needs CONFIG_X")]


def test_nipa_results_have_the_fields_its_collector_reads():
    doc = results.nipa(VERDICTS, branch="6.12.118", start=1000.0, end=1010.0, link="file:///logs/run")
    assert set(doc) == {"executor", "branch", "start", "end", "results", "link"}
    assert [r["result"] for r in doc["results"]] == ["pass", "fail", "skip"]
    assert all(set(r) == {"test", "group", "result", "time", "link"} for r in doc["results"])
    assert doc["results"][0] == {"test": "test-a-test-pass", "group": "harness-behaviour", "result": "pass",
                                 "time": 3, "link": "file:///logs/run"}


def test_kcidb_results_are_valid_against_the_kcidb_io_schema():
    doc = results.kcidb(VERDICTS, kernel_release="6.12.118+deb12-amd64", kernel_digest="ab" * 32, start=1000.0,
                        accel="tcg", log_url="file:///logs/run")
    schema.LATEST.validate_exactly(doc)
    assert [t["status"] for t in doc["tests"]] == ["PASS", "FAIL", "SKIP"]
    assert doc["tests"][1]["log_excerpt"] == "AssertionError: 3 != 4"
    assert len({t["id"] for t in doc["tests"]}) == 3
    # two shards' documents merged: one checkout, one build, every test
    other = results.kcidb(VERDICTS[:1], kernel_release="6.12.118+deb12-amd64", kernel_digest="ab" * 32,
                          start=2000.0, accel="tcg")
    merged = results.merge_kcidb([doc, other])
    schema.LATEST.validate_exactly(merged)
    assert (len(merged["checkouts"]), len(merged["builds"]), len(merged["tests"])) == (1, 1, 4)


SUITE = textwrap.dedent("""
    import pytest
    @pytest.mark.parametrize("n", range(7))
    def test_even(n):
        assert n % 2 == 0
    def test_skip():
        pytest.skip("nothing to do")
    @pytest.mark.xfail(reason="known")
    def test_xfail():
        assert False
""")


def run_pytest(tmp_path, name, *args):
    logs = tmp_path / "logs" / name
    proc = subprocess.run([sys.executable, "-m", "pytest", "test_suite.py", "-q", "-p", "no:cacheprovider",
                           "--harness-logs", str(logs), "--junitxml", str(logs / "junit.xml"),
                           "--results-format", "nipa", "--results-format", "kcidb", *args],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return logs


def verdicts_of(junit):
    out = {}
    for suite in JUnitXml.fromfile(str(junit)):
        for case in suite:
            out[case.name] = type(case.result[0]).__name__ if case.result else "passed"
    return out


def test_three_shards_merge_into_the_unsharded_runs_verdicts(tmp_path):
    (tmp_path / "test_suite.py").write_text(SUITE)
    whole = run_pytest(tmp_path, "whole")
    shards = [run_pytest(tmp_path, f"shard{k}", "--shard", f"{k}/3") for k in (1, 2, 3)]
    counts = [len(verdicts_of(s / "junit.xml")) for s in shards]
    assert sorted(counts) == [3, 3, 3] and sum(counts) == 9
    written, failed = merge_shards(shards, tmp_path / "merged")
    assert failed  # three of test_even fail
    assert verdicts_of(tmp_path / "merged" / "junit.xml") == verdicts_of(whole / "junit.xml")
    nipa = json.loads((tmp_path / "merged" / "results-nipa.json").read_text())
    assert sorted((r["test"], r["result"]) for r in nipa["results"]) == sorted(
        (r["test"], r["result"]) for r in json.loads(next(whole.rglob("results-nipa.json")).read_text())["results"])
    kcidb = json.loads((tmp_path / "merged" / "results-kcidb.json").read_text())
    schema.LATEST.validate_exactly(kcidb)
    assert len(kcidb["tests"]) == 9
    # a shard's results given twice (a copy) is an overlap, not a bigger run
    copy = tmp_path / "copy.xml"
    copy.write_bytes((shards[0] / "junit.xml").read_bytes())
    with pytest.raises(HarnessError, match="the shards overlap"):
        merge_shards([shards[0] / "junit.xml", copy, shards[1]], tmp_path / "again")


def test_merge_takes_a_reports_own_files_not_what_its_runs_wrote(tmp_path):
    """Below a pytest run's directory (run.json) lie its tests' own files (a
    fault test's list-shaped mutants.json, a runner test's ksft.json), below
    a mutants report its mutants' JUnit: none of them is a shard's."""
    (tmp_path / "test_suite.py").write_text(SUITE)
    shard = run_pytest(tmp_path, "shard1", "--shard", "1/3")
    run = next(p.parent for p in shard.rglob("run.json"))
    (run / "gw0" / "faults").mkdir(parents=True)
    (run / "gw0" / "faults" / "mutants.json").write_text("[]")
    (run / "tests" / "t").mkdir(parents=True)
    (run / "tests" / "t" / "ksft.json").write_text("{}")
    mutants = tmp_path / "mutants"
    mutant_report("1/1", ["dev.c:10:negate"]).write(mutants)
    (mutants / "dev.c-10-negate").mkdir()
    (mutants / "dev.c-10-negate" / "junit.xml").write_bytes((shard / "junit.xml").read_bytes())
    written, _ = merge_shards([shard, mutants], tmp_path / "merged")
    assert sorted(p.name for p, _ in written) == ["junit.xml", "mutants.json", "results-kcidb.json",
                                                  "results-nipa.json"]
    assert len(verdicts_of(tmp_path / "merged" / "junit.xml")) == 3


def test_a_bad_shard_is_named(tmp_path):
    (tmp_path / "test_suite.py").write_text(SUITE)
    proc = subprocess.run([sys.executable, "-m", "pytest", "test_suite.py", "--shard", "4/3"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 4
    assert "--shard 4/3: expected K/N with 1 <= K <= N (e.g. 2/3)" in proc.stderr


def mutant_report(shard, ids, status="killed"):
    return MutantReport("seed.patch", "backlog", "debian-6.12", 10.0,
                        [MutantResult(i, "negate", "", status) for i in ids], 100.0, shard=shard)


def test_mutant_shards_merge_in_source_order(tmp_path):
    for n, ids in ((1, ["dev.c:10:negate", "dev.c:300:delete"]), (2, ["dev.c:9:negate", "dev.c:41:const"])):
        mutant_report(f"{n}/2", ids).write(tmp_path / f"shard{n}")
    written, failed = merge_shards([tmp_path / "shard1", tmp_path / "shard2"], tmp_path / "merged")
    assert not failed
    doc = json.loads((tmp_path / "merged" / "mutants.json").read_text())
    assert [m["id"] for m in doc["mutants"]] == ["dev.c:9:negate", "dev.c:10:negate", "dev.c:41:const",
                                                 "dev.c:300:delete"]
    assert doc["totals"]["killed"] == 4
    other = MutantReport("other.patch", "backlog", "debian-6.12", 1.0, [], 1.0)
    other.write(tmp_path / "other")
    with pytest.raises(HarnessError, match="mutants of other.patch"):
        merge_shards([tmp_path / "shard1", tmp_path / "other"], tmp_path / "bad")


def test_selftest_shards_merge_with_their_counts(tmp_path):
    def ksft(tests):
        return {"source": "debian:6.12", "kernel": "vmlinuz", "wall_s": 10.0, "build_failures": [],
                "counts": {}, "tests": [{"test": t, "outcome": o, "seconds": 1.0, "attempts": []} for t, o in tests]}
    for n, tests in ((1, [("net:a.sh", "pass"), ("net:b.sh", "skip")]), (2, [("net:c.sh", "fail")])):
        (tmp_path / f"s{n}").mkdir()
        (tmp_path / f"s{n}" / "ksft.json").write_text(json.dumps(ksft(tests)))
    written, failed = merge_shards([tmp_path / "s1", tmp_path / "s2"], tmp_path / "merged")
    doc = json.loads((tmp_path / "merged" / "ksft.json").read_text())
    assert failed and doc["counts"] == {"pass": 1, "skip": 1, "fail": 1} and len(doc["tests"]) == 3
    (tmp_path / "s3").mkdir()
    (tmp_path / "s3" / "ksft.json").write_text(json.dumps(ksft([("net:a.sh", "pass")])))
    with pytest.raises(HarnessError, match="net:a.sh is in .* too: the shards overlap"):
        merge_shards([tmp_path / "s1", tmp_path / "s3"], tmp_path / "again")


def test_merge_names_an_input_with_nothing_to_merge(tmp_path):
    with pytest.raises(HarnessError, match="no JUnit XML, results-\\*.json, mutants.json or ksft.json found"):
        merge_shards([tmp_path], tmp_path / "out")
    (tmp_path / "broken.xml").write_text("<nope")
    with pytest.raises(HarnessError, match="broken.xml: expected a JUnit XML file"):
        merge_shards([tmp_path], tmp_path / "out")
