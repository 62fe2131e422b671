"""A lab's host objects are its own: an id no other lab holds, objects
tagged with their owner, and a reaper that removes what dead runs left
and nothing a live run (of this checkout or another) owns.  Real links
and namespaces, as root; no guest."""
import os
import subprocess

import pytest
from pyroute2 import IPRoute, netns

from harness.lab import hostnet
from harness.lab.hostnet import HostNet, HostNetError, owner_tag, reap_stale_labs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netlink, namespaces)")


def links() -> set[str]:
    with IPRoute() as ipr:
        return {l.get_attr("IFLA_IFNAME") for l in ipr.link("dump")}


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def made():
    """Links and namespaces a test makes by hand, removed after it."""
    names: list[tuple[str, str]] = []
    yield names
    with IPRoute() as ipr:
        for kind, name in names:
            if kind == "link":
                for index in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=index)
            elif name in netns.listnetns():
                netns.remove(name)


def test_two_labs_never_get_one_id():
    a = HostNet("abcd")
    try:
        with pytest.raises(HostNetError, match="lab id abcd is taken"):
            HostNet("abcd")
        others = [HostNet() for _ in range(3)]
        assert len({a.lab_id, *(o.lab_id for o in others)}) == 4
        for o in others:
            o.teardown()
    finally:
        a.teardown()


def test_a_lab_of_another_run_directory_with_the_same_id_leaves_the_first_labs_objects(tmp_path, monkeypatch):
    """Another checkout with its own run directory picks the same id: its
    bridge fails to be made (the name exists), and its teardown removes
    nothing of the first lab's."""
    first = HostNet("abce")
    try:
        bridge = first.add_bridge("br0")
        monkeypatch.setattr(hostnet, "LABS_DIR", tmp_path / "labs")
        second = HostNet("abce")
        with pytest.raises(HostNetError, match="exists already and is not this lab's"):
            second.add_bridge("br0")
        second.teardown()
        assert bridge in links()
    finally:
        monkeypatch.undo()
        first.teardown()
    assert bridge not in links()


def test_the_reaper_leaves_objects_a_live_run_owns_and_removes_a_dead_runs(made):
    live = "nhfe01live"
    dead = "nhfe02dead"
    untagged = "nhfe03none"
    with IPRoute() as ipr:
        for name, tag in ((live, owner_tag("fe01", os.getpid(), None)),
                          (dead, owner_tag("fe02", dead_pid(), None)), (untagged, None)):
            made.append(("link", name))
            ipr.link("add", ifname=name, kind="bridge")
            if tag:
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], ifalias=tag)
    made.append(("netns", "nhfe04deadns"))
    hostnet.create_namespace("nhfe04deadns")
    hostnet.in_netns("nhfe04deadns", lambda ipr: ipr.link(
        "set", index=ipr.link_lookup(ifname="lo")[0], ifalias=owner_tag("fe04", dead_pid(), None)))
    reaped = reap_stale_labs()
    assert dead in reaped and "nhfe04deadns" in reaped
    assert live not in reaped and untagged not in reaped
    assert {live, untagged} <= links() and dead not in links()
    assert "nhfe04deadns" not in netns.listnetns()


def test_a_registry_whose_owner_is_pid_0_is_a_dead_one(made):
    """pid 0 is no process (os.kill(0, 0) signals the caller's group)."""
    net = HostNet()
    bridge = net.add_bridge("br0")
    made.append(("link", bridge))
    hostnet._write_registry(net.registry, 0, None, net.objects)
    with IPRoute() as ipr:  # its tag names the same owner as the registry
        ipr.link("set", index=ipr.link_lookup(ifname=bridge)[0], ifalias=owner_tag(net.lab_id, 0, None))
    assert net.lab_id in reap_stale_labs()
    assert bridge not in links() and not net.registry.exists()


def test_a_namespace_is_made_without_a_fork_and_tagged():
    net = HostNet()
    try:
        ns = net.add_namespace("peer")
        assert ns.netns in netns.listnetns()
        assert hostnet.parse_tag(hostnet._netns_tag(ns.netns)) == (net.lab_id, os.getpid(), net.start,
                                                                  hostnet.home())
    finally:
        net.teardown()
    assert ns.netns not in netns.listnetns()
