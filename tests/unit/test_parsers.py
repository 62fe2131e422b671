"""Unit tests for the harness's parsers, on real kernel data."""
from pathlib import Path

import pytest

from harness.vm.images import module_load_order
from harness.kernel.kernel import Kernel, image_release, parse_kconfig, KernelError
from harness.vm.splat import find_splats, opener
from harness.vm.guest import GuestError, local_timer_ticks

DATA = Path(__file__).parent / "data"


def test_parse_kconfig():
    cfg = parse_kconfig('CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D="x y"\nCONFIG_E=250\n')
    assert cfg == {"CONFIG_A": "y", "CONFIG_B": "m", "CONFIG_C": "n", "CONFIG_D": "x y", "CONFIG_E": "250"}


def test_image_release_of_the_default_kernel():
    kernel = Kernel.default()
    assert image_release(kernel.image) == kernel.release


def test_image_release_rejects_a_non_kernel(tmp_path):
    junk = tmp_path / "bzImage"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(KernelError, match="not a bzImage"):
        image_release(junk)


def test_module_load_order_puts_dependencies_first(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/9p/9p.ko.xz: kernel/fs/netfs/netfs.ko.xz kernel/net/9p/9pnet.ko.xz\n"
        "kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\n"
        "kernel/net/9p/9pnet.ko.xz:\nkernel/fs/netfs/netfs.ko.xz:\n")
    order = [p.name for p in module_load_order(tmp_path, ["9pnet_virtio", "9p"])]
    assert order == ["9pnet.ko.xz", "9pnet_virtio.ko.xz", "netfs.ko.xz", "9p.ko.xz"]


@pytest.mark.parametrize("name, kinds", [
    ("sysrq-panic-6.12.txt", ["panic"]),
    ("warning-6.12.txt", ["warning"]),
    ("unregister-netdevice.txt", ["unregister_netdevice", "unregister_netdevice"]),
    ("kasan-uaf.txt", ["kasan"]),
    ("hung-task.txt", ["hung_task"]),
    ("rcu-stall.txt", ["rcu_stall"]),
    ("list-corruption.txt", ["list_corruption"]),
    ("lockdep-bad-unlock-6.1.txt", ["lockdep"]),
])
def test_splat_samples_are_classified(name, kinds):
    splats = find_splats((DATA / "splats" / name).read_text())
    assert [s.kind for s in splats] == kinds


def test_a_splat_without_an_end_marker_ends_at_a_mark_or_a_pause():
    text = ("[   11.50] WARNING: bad unlock balance detected!\n[   11.51] stack backtrace:\n"
            "[   11.52] harness-mark-1-1\n[   12.00] WARNING: CPU: 0 PID: 1 at net/core/dev.c:1 x+0x0/0x1\n"
            "[   14.00] WARNING: CPU: 1 PID: 2 at net/core/dev.c:2 y+0x0/0x1\n")
    splats = find_splats(text)
    assert [(s.kind, s.line_no) for s in splats] == [("lockdep", 0), ("warning", 3), ("warning", 4)]
    assert splats[0].lines[-1] == "[   11.51] stack backtrace:"


def test_a_splat_keeps_its_trace_until_the_end_marker():
    splat = find_splats((DATA / "splats" / "warning-6.12.txt").read_text())[0]
    assert "Call Trace:" in splat.text
    assert splat.lines[-1].endswith("---[ end trace 0000000000000000 ]---")


@pytest.mark.parametrize("line", [
    "[    1.0] eth0: renamed from veth0", "[    2.0] harness: guest ready",
    "[    3.0] WARNING-free line", "[    4.0] IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready",
])
def test_ordinary_lines_are_not_splats(line):
    assert opener(line) is None


def test_a_drivers_own_warning_message_is_not_a_splat():
    from harness.vm.splat import opener
    assert opener("[    4.29] pktgen: WARNING: Requested queue_map_min (1) exceeds valid range") is None
    assert opener("[   41.12] WARNING: CPU: 1 PID: 412 at net/core/dev.c:11468 x+0x6a1/0x8b0") == "warning"
    assert opener("WARNING: at net/core/dev.c:5000 y+0x1/0x2") == "warning"


INTERRUPTS = """\
           CPU0       CPU1       CPU2       CPU3
  0:         44          0          0          0   IO-APIC   2-edge      timer
LOC:        512       6101       6093       6088   Local timer interrupts
CAL:         10         57         61         58   Function call interrupts
"""


def test_local_timer_ticks_reads_the_loc_line_per_cpu():
    assert local_timer_ticks(INTERRUPTS) == [512, 6101, 6093, 6088]


@pytest.mark.parametrize("text", ["", INTERRUPTS.replace("LOC:", "LOX:"), INTERRUPTS.replace("6093", "x")])
def test_local_timer_ticks_names_a_missing_or_short_loc_line(text):
    with pytest.raises(GuestError, match="/proc/interrupts: expected a 'LOC"):
        local_timer_ticks(text)
