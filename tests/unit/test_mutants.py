"""The mutant generator on small patches and on seed 002's patch (golden)."""
from pathlib import Path

import pytest

from harness.catching.mutants import Patch, PatchError, mutants, parse_equivalent

ROOT = Path(__file__).resolve().parents[2]
SEED_002 = ROOT / "images/patches/0001-net-core-add-optional-threading-for-backlog-processing.patch"
GOLDEN = Path(__file__).parent / "golden" / "seed-002.mutants"

SMALL = """\
Some description.
---
--- a/net/x.c
+++ b/net/x.c
@@ -10,4 +10,16 @@
 static int f(struct s *s)
 {
+	unsigned int seen;
+	bool busy = false;   /* a declaration: left alone */
+
+	/* a comment: left alone */
+	if (s->count > 3 &&
+	    !list_empty(&s->list))
+		return -EBUSY;
+	s->flags |= S_BUSY;
+	s->users++;
+	while (busy) {
+		msleep(10);
+	}
 	return 0;
 }
--- a/Documentation/x.rst
+++ b/Documentation/x.rst
@@ -1,1 +1,2 @@
 Title
+A documented line (docs are not mutated).
"""


def by_id():
    return {m.id: m for m in mutants(Patch.parse(SMALL))}


def test_the_patch_renders_back_byte_for_byte():
    assert Patch.parse(SMALL).render() == SMALL
    assert Patch.parse(SEED_002.read_text()).render() == SEED_002.read_text()


def test_operators_on_added_statements_only():
    assert sorted(by_id()) == sorted([
        "x.c:16:negate", "x.c:16:boundary", "x.c:18:drop_jump",
        "x.c:19:delete", "x.c:19:flag_zero",
        "x.c:20:delete", "x.c:20:swap_incdec",
        "x.c:21:negate", "x.c:21:no_wait",
        "x.c:22:delete", "x.c:22:const"])


def test_a_multi_line_condition_is_negated_whole():
    m = by_id()["x.c:16:negate"]
    assert m.mutated == ["\tif (!(s->count > 3 &&", "\t    !list_empty(&s->list)))"]


def test_a_mutant_renders_as_a_patch_that_differs_in_its_statement_only():
    patch = Patch.parse(SMALL)
    m = {m.id: m for m in mutants(patch)}["x.c:19:flag_zero"]
    text = m.render(patch)
    changed = [(a, b) for a, b in zip(SMALL.splitlines(), text.splitlines(), strict=False) if a != b]
    assert changed == [("+\ts->flags |= S_BUSY;", "+\ts->flags = 0;")]
    assert Patch.parse(text).render() == text
    assert patch.render() == SMALL  # rendering a mutant leaves the patch as it was


def test_early_return_is_dropped_and_its_value_changed():
    ids = by_id()
    assert ids["x.c:18:drop_jump"].mutated == ["\t\t{ }  /* mutant: dropped */"]
    assert ids["x.c:22:const"].mutated == ["\t\tmsleep(0);"]


def test_seed_002_mutants_match_the_golden_list():
    """Any change to the operators or the patch shows up here: the
    .equivalent list beside the patch names mutants by these ids."""
    found = [f"{m.id}  {m.describe()}" for m in mutants(Patch.parse(SEED_002.read_text()))]
    assert found == GOLDEN.read_text().splitlines()


def test_not_a_diff_is_a_clear_error():
    with pytest.raises(PatchError, match="no file changes"):
        Patch.parse("just text\n")
    with pytest.raises(PatchError, match="ends early"):
        Patch.parse("--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,3 @@\n x\n")


def test_equivalent_list_format():
    assert parse_equivalent("# why\ndev.c:10:swap_incdec: the counter only has to move\n") == {
        "dev.c:10:swap_incdec": "the counter only has to move"}
    with pytest.raises(PatchError, match="line 1"):
        parse_equivalent("dev.c swap\n")
