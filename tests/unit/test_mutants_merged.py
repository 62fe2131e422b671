"""Mutants of merged code: a function's or a line range's statements made a
no-op patch's added lines (harness mutants --function/--lines/--targets)."""
import subprocess

import pytest

from harness.catching.mutants import Patch, PatchError, find_function, lines_patch, mutants, parse_targets, \
    targets_patch

SOURCE = """/* a file */
static int helper(int a);

static int
helper(int a)
{
\tif (a > 3)
\t\treturn a + 1;
\treturn a << 2;
}

int other(void)
{
\treturn helper(2) == 12;
}
"""


def test_a_function_is_found_by_its_definition_not_its_prototype_or_a_call():
    assert find_function(SOURCE, "helper") == (5, 10)
    assert find_function(SOURCE, "other") == (12, 15)
    with pytest.raises(PatchError, match="f.c: no definition of function nothere"):
        find_function(SOURCE, "nothere", "f.c")


def test_the_no_op_patch_changes_nothing_and_its_mutants_name_the_files_real_lines(tmp_path):
    text = lines_patch("x/f.c", SOURCE, [(5, 10)])
    patch = Patch.parse(text)
    new = [line for h in patch.files[0].hunks for _, _, line, added in h.new_side() if added]
    assert new == SOURCE.split("\n")[4:10]  # lines 5-10, re-added unchanged
    ids = {m.id for m in mutants(patch)}
    assert {"f.c:7:negate", "f.c:8:drop_jump", "f.c:9:const"} <= ids
    # applied, the unmutated patch leaves the file as it was
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f.c").write_text(SOURCE)
    subprocess.run(["patch", "-p1", "-d", str(tmp_path), "--batch"], input=text, text=True, check=True,
                   capture_output=True)
    assert (tmp_path / "x" / "f.c").read_text() == SOURCE


def test_a_mutant_of_merged_code_renders_a_patch_that_changes_only_its_line(tmp_path):
    text = targets_patch(["x/f.c:helper"], lambda paths: {p: SOURCE.encode() for p in paths})
    patch = Patch.parse(text)
    negate = next(m for m in mutants(patch) if m.id == "f.c:7:negate")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f.c").write_text(SOURCE)
    subprocess.run(["patch", "-p1", "-d", str(tmp_path), "--batch"], input=negate.render(patch), text=True,
                   check=True, capture_output=True)
    assert (tmp_path / "x" / "f.c").read_text() == SOURCE.replace("\tif (a > 3)", "\tif (!(a > 3))")


def test_ranges_near_each_other_make_one_hunk_and_bad_ranges_are_named():
    assert lines_patch("f.c", SOURCE, [(5, 10), (12, 15)]).count("@@ -") == 1
    with pytest.raises(PatchError, match=r"f.c:14-99: outside the file's 15 lines"):
        lines_patch("f.c", SOURCE, [(14, 99)])


def test_a_targets_file_is_one_target_a_line_with_comments():
    assert parse_targets("# seed 001\nnet/core/skbuff.c:skb_attempt_defer_free\n\nnet/core/dev.c:10-20  # why\n",
                         "t") == ["net/core/skbuff.c:skb_attempt_defer_free", "net/core/dev.c:10-20"]
    with pytest.raises(PatchError, match=r"t:1: 'skbuff.c skb_free': expected FILE:FUNCTION or FILE:A-B"):
        parse_targets("skbuff.c skb_free\n", "t")


def test_reference_runs_below_one_is_refused_before_anything_is_built(tmp_path):
    from harness.catching.runs import CatchingError, run_mutants
    with pytest.raises(CatchingError, match="--reference-runs 0: expected 1 or more"):
        run_mutants(None, tmp_path / "none.patch", expr="x", out_dir=tmp_path, reference_runs=0)  # type: ignore[arg-type]
