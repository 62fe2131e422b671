"""kmemleak reports: parsed strictly (they come from the guest), each leak
named by the first frame below the allocator."""
import pytest

from harness.vm.kmemleak import KmemleakError, parse_collection, parse_kmemleak

# the shape mm/kmemleak.c's print_unreferenced writes (6.12)
REPORT = """\
unreferenced object 0xffff888003c4e900 (size 232):
  comm "softirq", pid 0, jiffies 4294901720
  hex dump (first 32 bytes):
    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................
    00 e0 c4 03 80 88 ff ff 00 00 00 00 00 00 00 00  ................
  backtrace (crc 4b5f0a3c):
    kmem_cache_alloc_noprof+0x2c3/0x330
    __build_skb+0x23/0x60
    build_skb+0x1a/0xb0
    tun_get_user+0x8d1/0x1410
    tun_chr_write_iter+0x55/0xa0
unreferenced object 0xffff888004a1b000 (size 512):
  comm "python3", pid 312, jiffies 4294901733
  hex dump (first 32 bytes on cpu 1):
    6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b  kkkkkkkkkkkkkkkk
  backtrace (crc 0):
    __kmalloc_node_track_caller_noprof+0x1f4/0x3f0
    kmalloc_reserve+0x6f/0x100
    __alloc_skb+0x8d/0x1a0
"""


def test_kmemleak_report_parses_each_object_and_names_its_allocator():
    first, second = parse_kmemleak(REPORT)
    assert (first.address, first.size, first.comm, first.pid, first.jiffies) == (
        "0xffff888003c4e900", 232, "softirq", 0, 4294901720)
    assert first.backtrace[1] == "__build_skb+0x23/0x60"
    assert first.allocated_by == "__build_skb+0x23/0x60"
    assert second.comm == "python3" and second.allocated_by == "__alloc_skb+0x8d/0x1a0"
    assert "232 bytes at 0xffff888003c4e900 from __build_skb" in first.summary()


def test_frames_as_kernels_before_6_6_print_them_are_named_the_same():
    old = REPORT.replace("    __build_skb+0x23/0x60", "    [<ffffffff81a2b3c4>] __build_skb+0x23/0x60")
    assert parse_kmemleak(old)[0].allocated_by == "__build_skb+0x23/0x60"


def test_a_collection_is_the_count_then_the_first_objects():
    count, leaks = parse_collection("count 2000\n" + REPORT)
    assert count == 2000 and len(leaks) == 2
    assert parse_collection("count 0\n") == (0, [])
    with pytest.raises(KmemleakError, match="expected 'count N' first"):
        parse_collection(REPORT)


def test_an_empty_report_is_no_leak():
    assert parse_kmemleak("") == [] and parse_kmemleak("\n\n") == []


@pytest.mark.parametrize("text, named", [
    ("garbage before any object\n", "line 1"),
    ("unreferenced object 0xffff888003c4e900 (size 232):\n  backtrace (crc 1):\n    f+0x1/0x2\n", "no comm line"),
    (REPORT + "\x1b[31mnot a report line\n", "line 20"),
    (REPORT.replace("    00 00 00 00 00 00 00 00 00 00", "    rm -rf / 00 00 00 00 00"), "line 4"),
    (REPORT.replace("  hex dump (first 32 bytes):", "    some_function+0x1/0x2"), "line 3"),
])
def test_a_malformed_report_is_one_error_naming_the_line(text, named):
    with pytest.raises(KmemleakError, match=named):
        parse_kmemleak(text)
