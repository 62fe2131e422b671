"""The host budget (harness.vm.budget): its rules, and real processes
holding and waiting on one directory."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.util import HarnessError, owner_alive, pid_alive, process_start
from harness.vm.budget import Budget, Capacity, Share, auto_workers, fits

HOST = Capacity(vcpus=4, memory_mb=4096)


def share(pid, vcpus=2, memory_mb=512, group=None):
    return Share(pid, pid if group is None else group, vcpus, memory_mb)


def test_a_guest_fits_beside_others_while_the_host_has_room():
    assert fits(share(3), [share(1), share(3)], [], HOST)
    assert not fits(share(3), [share(1), share(2)], [], HOST)
    assert not fits(share(3, memory_mb=4000), [share(1)], [], HOST)


def test_a_process_never_waits_on_itself_or_its_group():
    mine = [share(1, vcpus=4), share(1, vcpus=4)]
    assert fits(share(1, vcpus=4), mine, [], HOST)               # own holdings: oversubscribed by one run
    assert fits(share(5, group=1), mine, [], HOST)               # a child pytest of that run
    assert fits(share(2, vcpus=8), [], [], HOST)                 # bigger than the host, nothing else holds


def test_two_holders_waiting_on_each_other_let_the_oldest_go():
    held = [share(10, vcpus=3), share(20, vcpus=3)]
    assert fits(share(10), held, [share(20)], HOST)
    assert not fits(share(20), held, [share(10)], HOST)
    # a holder in the way that is not waiting (running a test) is waited for
    assert not fits(share(10), held, [], HOST)


def test_a_process_holding_nothing_never_jumps_the_queue():
    held = [share(10, vcpus=3), share(20, vcpus=3)]
    assert not fits(share(5), held, [share(10), share(20)], HOST)   # older than both, but in no one's way


def test_the_oldest_is_by_start_time_not_pid():
    held = [Share(10, 10, 3, 512, start=500), Share(20, 20, 3, 512, start=100)]   # pid 10 is a reused, later pid
    waiting = [Share(10, 10, 2, 512, start=500), Share(20, 20, 2, 512, start=100)]
    assert fits(waiting[1], held, [waiting[0]], HOST)
    assert not fits(waiting[0], held, [waiting[1]], HOST)


def test_a_waiter_that_has_room_is_no_deadlock():
    # 30 holds nothing and waits behind 10; 10's own request fits (nothing else holds): no one jumps ahead
    held = [share(10, vcpus=4)]
    assert not fits(share(30), held, [share(10, vcpus=2)], HOST)


def test_auto_workers_from_the_budget():
    assert auto_workers(Capacity(2, 24000), 2, 512) == 1
    assert auto_workers(Capacity(32, 100000), 2, 512) == 16
    assert auto_workers(Capacity(32, 2048), 2, 512) == 4
    assert auto_workers(Capacity(1, 100), 2, 512) == 1


def test_a_bad_budget_variable_is_named(monkeypatch):
    monkeypatch.setenv("HARNESS_BUDGET_VCPUS", "lots")
    with pytest.raises(HarnessError, match=r"HARNESS_BUDGET_VCPUS='lots': expected a positive whole number"):
        Capacity.of_host()


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from harness.vm.budget import Budget, Capacity
    budget = Budget(Path(sys.argv[1]), Capacity(4, 4096))
    held = budget.hold(int(sys.argv[2]), 512, "test")
    print("HELD", round(held.waited_s, 1), flush=True)
    time.sleep(float(sys.argv[3]))
    held.release()
""")


def start_holder(root, vcpus, hold_s, env=None):
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(vcpus), str(hold_s)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def test_a_second_process_waits_until_the_first_releases(tmp_path):
    first = start_holder(tmp_path, 3, 2.0, env={"HARNESS_BUDGET_GROUP": ""})
    assert first.stdout.readline().split()[0] == "HELD"
    t0 = time.monotonic()
    second = start_holder(tmp_path, 3, 0, env={"HARNESS_BUDGET_GROUP": ""})
    line = second.stdout.readline().split()
    assert line[0] == "HELD" and time.monotonic() - t0 >= 1.0 and float(line[1]) >= 1.0
    assert first.wait(10) == 0 and second.wait(10) == 0
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_a_killed_holders_share_is_free_at_once(tmp_path):
    first = start_holder(tmp_path, 4, 600, env={"HARNESS_BUDGET_GROUP": ""})
    assert first.stdout.readline().split()[0] == "HELD"
    first.kill()
    first.wait()
    held = Budget(tmp_path, Capacity(4, 4096)).hold(4, 512)
    assert held.waited_s < 1.0
    held.release()
    assert list(tmp_path.iterdir()) == []  # the dead holder's file was reaped


def test_a_holder_that_exited_unreaped_is_not_alive(tmp_path):
    """A zombie (its parent has not waited for it yet) holds nothing: its
    share is free, though its pid still exists."""
    first = start_holder(tmp_path, 4, 600, env={"HARNESS_BUDGET_GROUP": ""})
    assert first.stdout.readline().split()[0] == "HELD"
    start = process_start(first.pid)
    os.kill(first.pid, 9)
    while Path(f"/proc/{first.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    assert pid_alive(first.pid) and not owner_alive(first.pid, start)
    held = Budget(tmp_path, Capacity(4, 4096)).hold(4, 512)
    assert held.waited_s < 1.0
    held.release()
    first.wait()


def test_a_dead_processes_shares_are_reaped_and_a_live_ones_kept(tmp_path):
    from harness.vm.budget import reap_shares, share_owners
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(dead.stdout)
    (tmp_path / f"budget-{gone}-1.json").write_text("{}")
    (tmp_path / f"budget-wait-{gone}-2.json").write_text("{}")
    (tmp_path / f"budget-{os.getpid()}-3.json").write_text("{}")
    (tmp_path / "unrelated.json").write_text("{}")
    assert sorted(map(str, reap_shares(tmp_path))) == sorted(
        [str(tmp_path / f"budget-{gone}-1.json"), str(tmp_path / f"budget-wait-{gone}-2.json")])
    assert share_owners(tmp_path) == {tmp_path / f"budget-{os.getpid()}-3.json": os.getpid()}


def test_a_release_from_another_thread_withdraws_a_waiting_request(tmp_path):
    """A lab's guest stopped (SIGTERM: the lab goes down) while its boot
    thread waits for the budget: the wait ends, and no file is left."""
    import threading
    from harness.vm.budget import BudgetWithdrawn
    first = start_holder(tmp_path, 4, 600, env={"HARNESS_BUDGET_GROUP": ""})
    assert first.stdout.readline().split()[0] == "HELD"
    holding = Budget(tmp_path, Capacity(4, 4096)).request(2, 512, "g1")
    raised = []

    def boot():
        try:
            holding.wait()
        except BudgetWithdrawn as e:
            raised.append(e)

    waiter = threading.Thread(target=boot)
    waiter.start()
    deadline = time.monotonic() + 10
    while not holding.wait_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holding.wait_path.exists()      # it was waiting
    holding.release()
    assert not holding.wait_path.exists()  # gone at once, before the thread notices
    waiter.join(5)
    assert not waiter.is_alive() and raised
    first.kill()
    first.wait()
