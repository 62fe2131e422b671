"""The classic operators (boundary, arith, sibling, swap_arg) and the kernel
ones that name what a deletion drops (drop_release, drop_wakeup) or swap a
lock for its plain variant (lock_plain), on a small merged function."""
from pathlib import Path

import pytest

from harness.catching.mutants import (Constants, Patch, PatchError, lines_patch, mutants, targets_patch,
                                      targets_selection)

HEADER = """\
#define TCQ_F_BUILTIN		1
#define TCQ_F_INGRESS		2
#define TCQ_F_NOLOCK		0x100 /* qdisc does not require locking,
 * the comment's lines do not end the run */
#define TCQ_F_OFFLOADED		0x200
#define TCQ_MAX(a, b)		((a) > (b) ? (a) : (b))

#define QDISC_ALONE		1

enum {
	NET_XMIT_SUCCESS = 0,
	NET_XMIT_DROP,	/* skb dropped */
	NET_XMIT_CN,
};
"""

SOURCE = """\
static int f(struct sk_buff *skb, struct sk_buff *next, int quota, int limit)
{
	struct qdisc *q = qdisc(skb);
	unsigned long flags;

	if (q->flags & TCQ_F_NOLOCK)
		return NET_XMIT_DROP;
	if (quota <= 0 || q->len < limit)
		return -EINVAL;
	spin_lock_bh(&q->lock);
	q->len += skb->len;
	q->mask = limit << 2;
	spin_unlock_bh(&q->lock);
	spin_lock_irqsave(&q->lock, flags);
	kfree_skb(skb);
	spin_unlock_irqrestore(&q->lock, flags);
	wake_up_interruptible(&q->wait);
	pr_err("dropped %d\\n", quota);
	consume(skb, quota);
	return q->len - 1;
}
"""


def by_id():
    patch = Patch.parse(lines_patch("net/f.c", SOURCE, [(1, SOURCE.count("\n"))]))
    return {m.id: m for m in mutants(patch, Constants.scan([HEADER]))}


def mutated(mutant_id):
    return " ".join(" ".join(by_id()[mutant_id].mutated).split())


def test_boundary_shifts_one_relation_at_a_time_and_leaves_arrows_and_shifts_alone():
    assert mutated("f.c:8:boundary") == "if (quota < 0 || q->len < limit)"
    assert mutated("f.c:8:boundary:2") == "if (quota <= 0 || q->len <= limit)"
    assert "f.c:8:boundary:3" not in by_id()
    assert not any(m.operator == "boundary" for m in by_id().values() if m.line_no == 12)  # <<


def test_equality_is_not_flipped_where_negating_the_condition_is_the_same_mutant():
    text = "static int g(int a)\n{\n\tif (a == 3)\n\t\treturn 1;\n\treturn a != 2 && a;\n}\n"
    found = {m.id: m for m in mutants(Patch.parse(lines_patch("g.c", text, [(1, 6)])))}
    assert "g.c:3:negate" in found and "g.c:3:boundary" not in found
    assert " ".join(found["g.c:5:boundary"].mutated).strip() == "return a == 2 && a;"


def test_arith_swaps_binary_operators_only():
    assert mutated("f.c:11:arith") == "q->len -= skb->len;"
    assert mutated("f.c:12:arith") == "q->mask = limit >> 2;"
    assert mutated("f.c:20:arith") == "return q->len + 1;"
    assert not any(m.operator == "arith" for m in by_id().values() if m.line_no == 9)  # return -EINVAL


def test_sibling_is_the_constant_defined_next_to_it():
    assert mutated("f.c:6:sibling") == "if (q->flags & TCQ_F_OFFLOADED)"
    assert mutated("f.c:7:sibling") == "return NET_XMIT_CN;"
    families = Constants.scan([HEADER]).families
    assert families["TCQ_F_NOLOCK"] == ["TCQ_F_BUILTIN", "TCQ_F_INGRESS", "TCQ_F_NOLOCK", "TCQ_F_OFFLOADED"]
    assert "TCQ_MAX" not in families and "QDISC_ALONE" not in families  # function-like; alone
    assert Constants.scan([HEADER]).sibling("TCQ_F_OFFLOADED") == "TCQ_F_NOLOCK"  # the last: the one before


def test_swap_arg_uses_a_variable_of_the_same_declared_type():
    assert mutated("f.c:15:swap_arg") == "kfree_skb(next);"
    assert mutated("f.c:19:swap_arg") == "consume(next, quota);"
    assert mutated("f.c:19:swap_arg:2") == "consume(skb, limit);"
    assert "f.c:18:swap_arg" not in by_id()  # a log line's argument is not behaviour


def test_deleting_a_release_or_a_wakeup_says_so():
    ids = by_id()
    assert {ids[i].operator for i in ("f.c:13:drop_release", "f.c:15:drop_release", "f.c:16:drop_release",
                                      "f.c:17:drop_wakeup")} == {"drop_release", "drop_wakeup"}
    assert "f.c:10:delete" in ids and "f.c:15:delete" not in ids


def test_lock_plain_keeps_irqsave_flags_valid():
    assert mutated("f.c:10:lock_plain") == "spin_lock(&q->lock);"
    assert mutated("f.c:13:lock_plain") == "spin_unlock(&q->lock);"
    assert mutated("f.c:14:lock_plain") == "local_save_flags(flags); spin_lock(&q->lock);"
    assert mutated("f.c:16:lock_plain") == "spin_unlock(&q->lock);"


def test_an_optional_target_is_skipped_where_the_source_lacks_it():
    files = lambda paths: {p: SOURCE.encode() for p in paths}  # noqa: E731
    assert targets_patch(["net/f.c:f", "net/f.c:gone?"], files) == targets_patch(["net/f.c:f"], files)
    with pytest.raises(PatchError, match="no definition of function gone"):
        targets_patch(["net/f.c:gone"], files)
    with pytest.raises(PatchError, match="none of the optional targets"):
        targets_patch(["net/f.c:gone?"], files)


def test_each_seeds_targets_file_names_its_selection():
    """tools/bench-mutants --seed N runs the selection the targets file names."""
    seeds = Path(__file__).resolve().parents[2] / "images" / "seeds"
    found = {f.stem: targets_selection(f.read_text()) for f in sorted(seeds.glob("*.targets"))}
    assert found == {"000": "lockless_qdisc or multiqueue", "001": "defer_free", "003": "napi_cache",
                     "004": "ring_drops or tun"}
    assert targets_selection("# nothing here\nnet/core/dev.c:f\n") is None


def test_declarations_and_empty_statements_are_not_deleted():
    """Deleting them would not build, or would change nothing."""
    source = "static void g(struct qdisc *q)\n{\n\tspinlock_t *root_lock = NULL;\n\n\t;\n\tkick(q);\n}\n"
    found = mutants(Patch.parse(lines_patch("net/g.c", source, [(1, 7)])))
    assert [m.id for m in found] == ["g.c:6:delete"]
