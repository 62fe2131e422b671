"""The instruments seed 001 and 003 need, on text captured from a 6.12
guest: tracefs events (where each skb was freed), /proc/slabinfo and
/proc/softirqs; and their errors on bytes that are not what they expect."""
from pathlib import Path

import pytest

from harness.measure.observe import ObserveError, parse_softirqs
from harness.measure.slab import SlabCounts, SlabError, parse_slabinfo
from harness.measure.tracing import TracingError, batches, count, parse_overruns, parse_trace, read_skb_fates

DATA = Path(__file__).parent / "data"


def events():
    return parse_trace((DATA / "trace-6.12.txt").read_text())


def test_trace_lines_become_events_with_their_cpu_and_fields():
    found = events()
    assert len(found) == 14
    first = found[0]
    assert (first.task, first.pid, first.cpu, first.timestamp, first.name) == \
        ("ip", 229, 1, 3.585778, "consume_skb")
    assert first.field("location") == "netlink_unicast+0x202/0x2f0"
    assert found[-2].task == "kworker/u4:1-ev" and found[-2].name == "tracing_mark_write"
    assert count(found, "consume_skb", cpu=0, where="skb_defer_free_flush") == 2


def test_each_read_skb_is_followed_to_its_free():
    """aaaa0001 was read in two parts, aaaa0002 once: both freed on CPU 0;
    aaaa0003 was never seen freed; ecdf9b89 was read and freed on CPU 1;
    aaaa0009 was freed but never read."""
    fates = read_skb_fates(events(), reader_cpu=1)
    assert (fates.read, fates.freed_on, fates.untraced) == (4, {0: 2, 1: 1}, 1)
    assert [e.field("skbaddr") for e in fates.frees] == ["00000000ecdf9b89", "00000000aaaa0001", "00000000aaaa0002"]
    assert fates.share_freed_on(0) == 0.5


def test_a_flush_is_the_frees_no_napi_poll_or_softirq_boundary_separates():
    found = events()
    freed = {id(e) for e in read_skb_fates(found, 1).frees}
    assert batches(found, 0, lambda e: id(e) in freed) == [1, 1]
    assert batches(found, 0, lambda e: id(e) in freed, boundaries=("softirq_entry", "softirq_exit")) == [2]


def test_lost_events_are_summed_over_cpus():
    assert parse_overruns("entries: 302\noverrun: 0\ncommit overrun: 0\nentries: 1\noverrun: 7\n") == 7


def test_a_line_that_is_not_an_event_is_named():
    with pytest.raises(TracingError, match="trace line 2: not an event line"):
        parse_trace("# header\ngarbage from a guest\n")


def test_slabinfo_counts_and_what_grew_beyond_its_slack():
    table = parse_slabinfo((DATA / "slabinfo-6.12.txt").read_text())
    assert table["skbuff_head_cache"].active_objs == 32 and table["skbuff_head_cache"].objsize == 256
    assert "skbuff_fclone_cache" not in table  # merged into another cache on this kernel
    grown = SlabCounts({"skbuff_head_cache": 5032, "skbuff_small_head": 50}) - \
        SlabCounts({"skbuff_head_cache": 32, "skbuff_small_head": 46})
    assert grown.objects == {"skbuff_head_cache": 5000, "skbuff_small_head": 4}
    assert grown.within({"skbuff_head_cache": 400, "skbuff_small_head": 400}) == \
        ["skbuff_head_cache: +5000 objects (slack 400)"]
    with pytest.raises(SlabError, match="version: 2.x"):
        parse_slabinfo("name 1 2 3\n")
    with pytest.raises(SlabError, match="line 2"):
        parse_slabinfo("slabinfo - version: 2.1\nskbuff_head_cache x y z\n")


def test_softirqs_per_cpu():
    runs = parse_softirqs((DATA / "softirqs-2cpu.txt").read_text())
    assert runs["NET_RX"] == (3, 0) and runs["RCU"] == (881, 391) and len(runs) == 10
    with pytest.raises(ObserveError, match="line 2"):
        parse_softirqs("   CPU0 CPU1\nNET_RX: 1\n")
