"""Patch coverage (harness.catching.coverage, harness.vm.gcov): a tiny C
file patched, compiled with --coverage on the host and run twice (two
"tests"), its gcda read by gcov and mapped onto the patch's added lines;
the guest's dump parser on what a guest may send."""
import base64
import shutil
import subprocess
import textwrap

import pytest

from harness.catching.coverage import (CoverageError, CoverageReport, coverage_of_run, gcov_lines, gcovr_pages,
                                       parse_gcov_json, patch_coverage, profile_patch, strip_objtree,
                                       unreached_mutants)
from harness.catching.mutants import Patch, mutants
from harness.vm.gcov import GcovError, GcovStore, parse_gcda_dump

pytestmark = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("gcov") and shutil.which("patch")),
                                reason="needs gcc, gcov and patch on the host")

BASE = textwrap.dedent("""\
    #include <stdlib.h>

    static int classify(int x)
    {
    \tif (x < 0)
    \t\treturn -1;
    \treturn 1;
    }

    static int twice(int x)
    {
    \treturn 2 * x;
    }

    int main(int argc, char **argv)
    {
    \tint x = atoi(argv[1]);

    \treturn classify(x) + twice(x) > 100;
    }
    """)

# hunk 1 adds three lines to classify(); hunk 2's lines, in twice(), are
# then three lines further down than the base file has them
PATCH = textwrap.dedent("""\
    --- a/net/core/t.c
    +++ b/net/core/t.c
    @@ -4,5 +4,8 @@ static int classify(int x)
     {
     \tif (x < 0)
     \t\treturn -1;
    +\tif (x == 0)
    +\t\treturn 0;
    +\tx = x + 1;
     \treturn 1;
     }
    @@ -10,4 +13,7 @@ static int classify(int x)
     static int twice(int x)
     {
    +\tif (x > 1000)
    +\t\treturn 0;
    +\tx = x - 1;
     \treturn 2 * x;
     }
    """)


def _run(argv, cwd):
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def built(tmp_path):
    """The patched file compiled with --coverage in a tree at tmp_path/tree;
    run(arg) runs it once and returns that run's gcda files."""
    tree = tmp_path / "tree"
    (tree / "net/core").mkdir(parents=True)
    (tree / "net/core/t.c").write_text(BASE)
    (tmp_path / "p.patch").write_text(PATCH)
    _run(["patch", "-p1", "-s", "-i", str(tmp_path / "p.patch")], tree)
    _run(["gcc", "-O0", "--coverage", "-c", "net/core/t.c", "-o", "net/core/t.o"], tree)
    _run(["gcc", "--coverage", "net/core/t.o", "-o", "t"], tree)

    def run(arg):
        (tree / "net/core/t.gcda").unlink(missing_ok=True)
        subprocess.run([str(tree / "t"), str(arg)], cwd=tree, check=False)
        return {"net/core/t.gcda": (tree / "net/core/t.gcda").read_bytes()}
    return tree, run


def test_lines_of_a_patch_mapped_per_test_with_moved_line_numbers(built):
    tree, run = built
    per_test = {"test_negative": gcov_lines(run(-5), tree), "test_positive": gcov_lines(run(7), tree)}
    report = patch_coverage(Patch.parse(PATCH), per_test, name="p.patch", selection="t")
    first, second = report.hunks
    # new-side numbers: hunk 2's added lines are 15-17 (the base had "return 2 * x" at 12)
    assert [line.number for line in first.added] == [7, 8, 9]
    assert [line.number for line in second.added] == [15, 16, 17]
    by_line = {(h.index, line.number): line for h in report.hunks for line in h.added}
    # x = -5 returns before hunk 1's lines; x = 7 runs its test and its x + 1, not its return 0
    assert by_line[1, 7].tests == ["test_positive"] and by_line[1, 9].tests == ["test_positive"]
    assert by_line[1, 8].executable and by_line[1, 8].count == 0
    # both runs call twice(): its test line twice, its return never, its x - 1 twice
    assert (by_line[2, 15].count, by_line[2, 15].tests) == (2, ["test_negative", "test_positive"])
    assert by_line[2, 16].executable and by_line[2, 16].count == 0
    assert by_line[2, 17].count == 2
    assert (report.lines_added, report.lines_executable, report.lines_reached) == (6, 6, 4)
    assert report.by_test() == {"test_negative": [second.name], "test_positive": [first.name, second.name]}
    assert "#####     16 |+\t\treturn 0;" in report.annotated()
    assert report.unreached() == []


def test_mutants_on_lines_no_test_ran_are_unreached(built):
    tree, run = built
    parsed = Patch.parse(PATCH)
    report = patch_coverage(parsed, {"test_positive": gcov_lines(run(7), tree)}, selection="t")
    found = mutants(parsed)
    unreached = unreached_mutants(report, found)
    assert unreached and all(mid.startswith(("t.c:8:", "t.c:16:")) for mid in unreached), unreached
    assert {m.id for m in found if m.line_no in (8, 16)} == set(unreached)


def test_collections_saved_by_the_plugin_read_back_per_test(built, tmp_path):
    tree, run = built
    store = GcovStore(tmp_path / "gcda")
    objtree = "/root/cache/trees/x/src"
    store.save("tests/a.py::test_negative", "g1", {f"{objtree[1:]}/{k}": v for k, v in run(-5).items()})
    store.save("tests/a.py::test_positive", "g1", {f"{objtree[1:]}/{k}": v for k, v in run(7).items()})
    report = coverage_of_run(Patch.parse(PATCH), tmp_path / "gcda", tree, objtree, name="p", selection="t")
    assert report.tests == ["tests/a.py::test_negative", "tests/a.py::test_positive"]
    assert report.lines_reached == 4


def test_a_gcda_from_outside_the_build_tree_is_named():
    with pytest.raises(CoverageError, match="not under the build tree"):
        strip_objtree({"home/x/linux/net/core/dev.gcda": b"adcg"}, "/root/tree/src")


def test_gcov_json_paths_are_made_relative_and_instances_summed():
    text = ('{"files": [{"file": "./include/linux/skbuff.h", "lines": [{"line_number": 5, "count": 2}]},'
            ' {"file": "/t/src/include/linux/skbuff.h", "lines": [{"line_number": 5, "count": 3}]}]}')
    assert parse_gcov_json(text, tree="/t/src") == {"include/linux/skbuff.h": {5: 5}}
    with pytest.raises(CoverageError, match="line_number and count"):
        parse_gcov_json('{"files": [{"file": "a.c", "lines": [{"count": 1}]}]}')


def test_profile_patch_applies_and_names_each_object(tmp_path):
    (tmp_path / "net/core").mkdir(parents=True)
    makefile = "obj-y := sock.o\nobj-y += dev.o\n\nobj-$(CONFIG_X) += gro.o\n"
    (tmp_path / "net/core/Makefile").write_text(makefile)
    files = lambda paths: {p: (tmp_path / p).read_bytes() for p in paths if (tmp_path / p).exists()}  # noqa: E731
    text = profile_patch(["net/core/dev.c", "net/core/gro.c"], files)
    (tmp_path / "p.patch").write_text(text)
    _run(["patch", "-p1", "-s", "-i", str(tmp_path / "p.patch")], tmp_path)
    after = (tmp_path / "net/core/Makefile").read_text()
    assert after.startswith(makefile) and after.endswith("GCOV_PROFILE_dev.o := y\nGCOV_PROFILE_gro.o := y\n")
    with pytest.raises(CoverageError, match="net/sched/Makefile"):
        profile_patch(["net/sched/sch_generic.c"], files)


def _dump(path, data, size=None):
    return f"gcda {path} {len(data) if size is None else size}\n{base64.b64encode(data).decode()}\n"


def test_the_guests_gcda_dump_is_parsed_strictly():
    good = b"adcg" + bytes(range(40))
    assert parse_gcda_dump(_dump("root/src/net/core/dev.gcda", good)) == {"root/src/net/core/dev.gcda": good}
    for text, error in [
            ("hello\n", "expected 'gcda PATH SIZE'"),
            (_dump("../etc/x.gcda", good), "without '..'"),
            (_dump("/abs/x.gcda", good), "relative path"),
            (_dump("a/x.gcda", good, size=3), "expected 3 bytes"),
            (_dump("a/x.gcda", b"gcno" + good[4:]), "without the gcda magic"),
            ("gcda a/x.gcda 4\n!!!!\n", "not base64"),
            ("gcda a/x.gcda 4\n", "data line is missing"),
            (_dump("a/x.gcda", good) * 2, "twice")]:
        with pytest.raises(GcovError, match=error):
            parse_gcda_dump(text)


def test_a_report_read_back_from_its_json_is_the_same(built, tmp_path):
    tree, run = built
    report = patch_coverage(Patch.parse(PATCH), {"t1": gcov_lines(run(7), tree)}, name="p", selection="t")
    report.write(tmp_path / "out")
    again = CoverageReport.from_json_file(tmp_path / "out" / "coverage.json")
    assert again.table() == report.table() and again.markdown() == report.markdown()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CoverageError, match="bad.json: not a coverage.json"):
        CoverageReport.from_json_file(tmp_path / "bad.json")


def test_pages_mark_the_patch_lines_and_gcovr_draws_the_files(built, tmp_path):
    tree, run = built
    store = GcovStore(tmp_path / "gcda")
    store.save("tests/a.py::test_positive", "g1", {f"{str(tree)[1:]}/{k}": v for k, v in run(7).items()})
    report = coverage_of_run(Patch.parse(PATCH), tmp_path / "gcda", tree, str(tree), name="p", selection="t")
    page = report.html()
    assert '<tr class="unreached" title=""><td class="n">#####</td><td class="n">8</td>' in page
    assert '<tr class="reached" title="test_positive"><td class="n">1</td><td class="n">7</td>' in page
    index = gcovr_pages(tmp_path / "gcda", tree, str(tree), ["net/core/t.c"], tmp_path / "files")
    text = index.read_text()
    assert "t.c" in text and list((tmp_path / "files").glob("index.t.c.*.html"))
