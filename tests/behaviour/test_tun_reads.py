"""tun: how tun's tx ring meets its readers (seed 004: the skb array behind
tun_do_read, tun_chr_poll and multiqueue taps), in the guest kernel's own
tun.  The frame counts are exact: nothing else writes to these taps."""
import json
import select
from collections import defaultdict
from pathlib import Path

import pytest

from harness.measure.slab import drained_slabs, leaks

TUN_READS = Path(__file__).parent / "guest" / "tun_reads.py"
RING = 64  # the script's tx_queue_len

pytestmark = pytest.mark.needs("CONFIG_TUN")


def run(guest, *args):
    return json.loads(guest.check(f"python3 {TUN_READS} {' '.join(args)}").stdout)


def test_tun_reads_nonblocking_poll_blocking_and_wakeups(guest):
    """An empty ring: a non-blocking read says EAGAIN and poll says writable
    only; one queued frame makes it readable; a zero-length read consumes
    nothing.  A blocked reader is woken by the next frame, by a signal, and
    by the device's unregister (EFAULT); after that the file reads EBADFD and
    polls POLLERR.  A down tap is not writable, and a poller waiting for it
    is woken when the tap comes up."""
    r = run(guest, "reads", "gtr0")
    assert r["first"] == [0]
    assert r["empty_nonblocking"] == "EAGAIN"
    assert r["poll_empty"] == select.POLLOUT
    assert r["poll_queued"] == select.POLLIN | select.POLLOUT
    assert r["zero_length_read"] == 0 and r["after_zero_length"] == [1]
    assert r["poll_drained"] == select.POLLOUT
    assert r["reader_blocked"], "the reader never slept in read()"
    assert r["woken_by_frame"] == {"hung": False, "result": 2, "error": None}, r["limit_s"]
    assert r["signal"] == {"interrupted": True}
    assert r["poll_down"] == 0, "a down tap polled writable"
    assert r["poller_blocked_while_down"], "the poller never slept in poll()"
    assert r["woken_by_up"] == {"hung": False, "result": select.POLLOUT, "error": None}, r["limit_s"]
    assert r["reader_blocked_at_unregister"], "the reader never slept in read()"
    assert r["woken_by_unregister"] == {"hung": False, "result": None, "error": "EFAULT"}, r["limit_s"]
    assert r["read_after_unregister"] == "EBADFD"
    assert r["poll_after_unregister"] == select.POLLERR


def queue_of_each_flow(queues):
    """flow -> the one queue its frames were read from (seq = flow*4 + i)."""
    seen = defaultdict(set)
    for q, seqs in enumerate(queues):
        for seq in seqs:
            seen[seq // 4].add(q)
    assert all(len(qs) == 1 for qs in seen.values()), f"a flow was split over queues: {dict(seen)}"
    return {flow: qs.pop() for flow, qs in seen.items()}


def test_tun_multiqueue_rings_per_queue_detach_and_resize(guest):
    """IFF_MULTI_QUEUE, two queues: flows are spread over both rings, one flow
    on one queue in order, each ring holds exactly tx_queue_len and the rest
    is refused and counted.  Detaching a queue drops what its ring held;
    the one queue left takes all traffic; a tx_queue_len change resizes the
    detached queue's ring as well as the attached one's."""
    r = run(guest, "mq", "gtm0")
    spread = r["spread"]
    flows = queue_of_each_flow(spread["queues"])
    assert len(flows) == 64, "the first frame of every flow fits: every flow is read"
    for q, seqs in enumerate(spread["queues"]):
        offered = [s for s in sorted(range(256), key=lambda s: (s % 4, s // 4)) if flows[s // 4] == q]
        assert seqs == offered[:RING], f"queue {q}: not the first {RING} frames offered to it, in order"
    assert set(flows.values()) == {0, 1}, "tun put every flow on one queue"
    assert sorted(spread["accepted"]) == sorted(spread["queues"][0] + spread["queues"][1])
    assert spread["refused"] == spread["tx_dropped"] == 256 - len(spread["accepted"])

    assert r["detached_read"] == [], "a detached queue kept its frames"
    assert r["kept_by_attached"] == [1000 + f for f in range(64) if flows[f] == 0]

    one = r["one_queue"]  # queue 1 detached, tx_queue_len 32
    assert one["accepted"] == list(range(2000, 2032)) and one["queue0"] == one["accepted"]
    assert one["refused"] == one["tx_dropped"] == 68
    assert r["reattached_empty"] == []
    other = r["other_queue"]  # queue 0 detached: queue 1's ring was resized while it was detached
    assert other["accepted"] == list(range(3000, 3032)) and other["queue1"] == other["accepted"]
    assert other["refused"] == other["tx_dropped"] == 68


@pytest.mark.needs("CONFIG_SLUB")
def test_tun_closed_with_a_full_ring_frees_every_queued_frame(guest):
    """Closing a tap whose ring is full (tun_detach -> tun_queue_purge) frees
    every frame it held: 10 rings of 1000 frames, closed unread, leave the
    skb caches, drained, where they were (within the slab's own slack)."""
    cycles, frames = 10, 1000
    baseline = drained_slabs(guest)
    r = run(guest, "close", "gtc0", str(cycles), str(frames))
    assert r["queued"] == cycles * frames, "the rings were not full when closed"
    beyond = leaks(guest, baseline)
    assert not beyond, f"after {cycles * frames} frames closed in their rings: {'; '.join(beyond)}"
