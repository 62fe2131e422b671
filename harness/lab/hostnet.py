"""Host-side plumbing of a lab: taps, bridges, veth pairs and namespaces,
through netlink (pyroute2).

Every object is named ``nh<lab id><short name>`` (lab id: 4 hex digits,
reserved by creating /run/netdev-harness/labs/<lab id>.json exclusively),
recorded there before it is created, and tagged once it exists with its
owner (the link's alias, a namespace's loopback alias: "netdev-harness
lab=ID pid=PID start=TICKS").  A later run reaps what a killed one left:
the objects of registries whose owner is gone, and untracked ``nh``
objects whose tag names a dead owner -- never one another live run owns,
nor one it cannot tell is a harness's.  Addresses and routes
only ever go inside the lab's own namespaces: the host's own addresses,
routes and sysctls are never touched (new root-namespace links only get IPv6
turned off on themselves, so they stay silent).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import subprocess
from collections.abc import Iterable
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from ..endpoint import DoneJob, Endpoint, Result
from ..netns import create_namespace, in_netns
from ..util import (RUN_ROOT, HarnessError, owner_alive, private_dir, process_start, reap_temp, teardown_section,
                    temp_beside, write_atomic)

log = logging.getLogger(__name__)

PREFIX = "nh"
_OURS = re.compile(rf"{PREFIX}([0-9a-f]{{4}})")
LABS_DIR = RUN_ROOT / "labs"
_TAG = re.compile(r"netdev-harness lab=([0-9a-f]{4}) pid=(\d+) start=(\d+|-) home=([0-9a-f]{8})")


class HostNetError(HarnessError):
    pass


def lab_id_of(name: str) -> str | None:
    """The lab id in a host object's name (``nh<lab id><short>``), or None."""
    m = _OURS.match(name)
    return m.group(1) if m else None


def host_objects(lab_id: str | None = None) -> set[str]:
    """Host links and namespaces named by a lab (``lab_id``'s, or any lab's)."""
    with IPRoute() as ipr:
        names = {link.get_attr("IFLA_IFNAME") or "" for link in ipr.link("dump")}
    names |= set(netns.listnetns())
    return {n for n in names if lab_id_of(n) is not None and lab_id in (None, lab_id_of(n))}


def _silence_ipv6(ifname: str):
    """No router solicitations or DAD from a lab link in the root namespace."""
    try:
        Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1")
    except OSError:
        pass


class HostNamespace(Endpoint):
    """A lab-owned network namespace on the host: a host "container"."""

    def __init__(self, netns: str, short: str):
        self.netns = netns    # the real netns name (prefixed)
        self.short = short    # its name in the topology
        self.name = f"host/{short}"

    def spawn(self, command: str) -> HostJob:
        """Start ``command`` in the namespace; returns at once (like Guest.spawn)."""
        return HostJob(subprocess.Popen(["ip", "netns", "exec", self.netns, "sh", "-c", command],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE), self.name)

    def dump(self, patterns: list[str]) -> DoneJob:
        """Read the files matching glob ``patterns`` inside the namespace: the
        guest agent's own dump (Guest.dump), run on the host."""
        from ..vm.images import build_agent
        proc = subprocess.run([build_agent(), "--dump", self.netns, *patterns], capture_output=True)
        return DoneJob(Result(proc.returncode, proc.stdout, proc.stderr))

    def __repr__(self):
        return f"<HostNamespace {self.short} ({self.netns})>"


class HostJob:
    """A command running in a host namespace: the same wait() as a guest Job."""

    def __init__(self, proc: subprocess.Popen, where: str = "host"):
        self.proc, self.where = proc, where

    def wait(self, timeout: float | None = 60.0) -> Result:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise HostNetError(f"{self.where}: command timed out after {timeout}s: {self.proc.args!r}\n"
                               f"{out.decode(errors='replace')[-2000:]}") from None
        return Result(self.proc.returncode, out, err)

    def kill(self) -> None:
        self.proc.kill()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


class HostNet:
    """The host objects of one lab; ``teardown()`` removes every one."""

    def __init__(self, lab_id: str | None = None):
        self.owner = os.getpid()
        self.start = process_start(self.owner)
        self.lab_id, self.registry = _reserve(lab_id, self.owner, self.start)
        self.objects: list[tuple[str, str]] = []  # ("link"|"netns", name) in creation order
        self.ipr = IPRoute()

    @property
    def tag(self) -> str:
        return owner_tag(self.lab_id, self.owner, self.start)

    def name(self, short: str) -> str:
        name = f"{PREFIX}{self.lab_id}{short}"
        if len(name) > 15:
            raise HostNetError(f"host interface name {name!r} is longer than 15 characters")
        return name

    def _record(self, kind: str, name: str):
        """Recorded before it is made (a run killed in between leaves a
        registry entry, not an unknown object); a name that exists already
        is someone else's and is never recorded (nor removed)."""
        if kind == "link" and self.ipr.link_lookup(ifname=name):
            raise HostNetError(f"host link {name} exists already and is not this lab's "
                               "(another run's, or not a harness's): not touched")
        self.objects.append((kind, name))
        _write_registry(self.registry, self.owner, self.start, self.objects)

    def _index(self, ifname: str) -> int:
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            raise HostNetError(f"host link {ifname} vanished")
        return found[0]

    def _add_link(self, name: str, **kw) -> int:
        """Create link ``name`` and tag it ours; its index."""
        try:
            self.ipr.link("add", ifname=name, **kw)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                raise HostNetError(f"host link {name} exists already and is not this lab's "
                                   "(another run's, or not a harness's): not touched") from None
            raise
        index = self._index(name)
        self.ipr.link("set", index=index, ifalias=self.tag)
        return index

    # -- objects ----------------------------------------------------------------
    def add_bridge(self, short: str) -> str:
        name = self.name(short)
        self._record("link", name)
        index = self._add_link(name, kind="bridge", br_stp_state=0, br_forward_delay=0)
        _silence_ipv6(name)
        self.ipr.link("set", index=index, state="up")
        return name

    def add_tap(self, short: str, *, queues: int = 1, mtu: int = 1500, tx_queue_len: int = 1000,
                bridge: str | None = None) -> str:
        """A persistent tap for QEMU to open; multi-queue when queues > 1."""
        name = self.name(short)
        self._record("link", name)
        index = self._add_link(name, kind="tuntap", mode="tap",
                               ifr={"no_pi": True, "vnet_hdr": True, "one_queue": False,
                                    "multi_queue": queues > 1})
        _silence_ipv6(name)
        self.ipr.link("set", index=index, mtu=mtu, txqlen=tx_queue_len)
        if bridge:
            self.ipr.link("set", index=index, master=self._index(bridge))
        self.ipr.link("set", index=index, state="up")
        return name

    def add_namespace(self, short: str) -> HostNamespace:
        name = self.name(short)
        if name in netns.listnetns():
            raise HostNetError(f"host namespace {name} exists already and is not this lab's: not touched")
        self._record("netns", name)
        create_namespace(name)
        tag = self.tag

        def setup(ipr: IPRoute) -> None:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up", ifalias=tag)
            for key in ("all", "default"):  # the namespace is ours: keep it quiet
                Path(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6").write_text("1")

        in_netns(name, setup)
        return HostNamespace(name, short)

    def add_veth_into(self, host_short: str, ns: HostNamespace, ifname: str, *, bridge: str,
                      address: str | None = None, mtu: int | None = None) -> str:
        """veth pair: ``ifname`` inside ``ns``, its peer (host_short) on ``bridge``."""
        host_end = self.name(host_short)
        self._record("link", host_end)
        tmp_end = self.name(host_short + "x")
        self._add_link(host_end, kind="veth", peer=tmp_end)
        _silence_ipv6(host_end)
        nsfd = os.open(f"/run/netns/{ns.netns}", os.O_RDONLY)
        try:
            self.ipr.link("set", index=self._index(tmp_end), net_ns_fd=nsfd)
        finally:
            os.close(nsfd)
        host_index = self._index(host_end)
        if mtu:
            self.ipr.link("set", index=host_index, mtu=mtu)
        self.ipr.link("set", index=host_index, master=self._index(bridge), state="up")

        def inside(ipr: IPRoute) -> None:
            index = ipr.link_lookup(ifname=tmp_end)[0]
            ipr.link("set", index=index, ifname=ifname)
            if mtu:
                ipr.link("set", index=index, mtu=mtu)
            if address:
                ip, prefix = address.split("/")
                ipr.addr("add", index=index, address=ip, prefixlen=int(prefix))
            ipr.link("set", index=index, state="up")

        in_netns(ns.netns, inside)
        return host_end

    def add_route(self, ns: HostNamespace, to: str, via: str) -> None:
        in_netns(ns.netns, lambda ipr: ipr.route(
            "add", dst="0.0.0.0/0" if to == "default" else to, gateway=via))

    def sysctl(self, ns_name: str, key: str, value: str) -> None:
        """A sysctl inside one of the lab's namespaces (never the host's)."""
        path = Path("/proc/sys") / key.replace(".", "/")
        in_netns(ns_name, lambda ipr: path.write_text(value))

    def apply(self, plan: list[dict]) -> dict[str, dict[str, str]]:
        """Create the objects of a plan (render.host_plan), in order;
        returns the real names: {"links": {short: name}, "namespaces":
        {short: netns}}."""
        links: dict[str, str] = {}
        namespaces: dict[str, HostNamespace] = {}
        for step in plan:
            op = step["op"]
            if op == "bridge":
                links[step["name"]] = self.add_bridge(step["name"])
            elif op == "tap":
                links[step["name"]] = self.add_tap(step["name"], queues=step["queues"], mtu=step["mtu"],
                                                   tx_queue_len=step["tx_queue_len"],
                                                   bridge=links[step["bridge"]] if step["bridge"] else None)
            elif op == "namespace":
                namespaces[step["name"]] = self.add_namespace(step["name"])
            elif op == "veth":
                links[step["name"]] = self.add_veth_into(step["name"], namespaces[step["namespace"]],
                                                         step["ifname"], bridge=links[step["bridge"]],
                                                         address=step["address"], mtu=step["mtu"])
            elif op == "route":
                self.add_route(namespaces[step["namespace"]], step["to"], step["via"])
            elif op == "sysctl":
                self.sysctl(namespaces[step["namespace"]].netns, step["key"], step["value"])
            else:
                raise HostNetError(f"host plan: unknown step {op!r}")
        return {"links": links, "namespaces": {short: ns.netns for short, ns in namespaces.items()}}

    # -- teardown -----------------------------------------------------------------
    def teardown(self) -> None:
        if os.getpid() != self.owner:
            return  # a forked copy of the owner unwinding its stack: not ours to remove
        # A fresh socket: a failure during setup may have left self.ipr
        # waiting for a reply that will never come.
        with teardown_section():
            self.ipr.close()
            remove_objects(self.objects, self.lab_id, (self.owner, self.start))
            self.objects = []
            self.registry.unlink(missing_ok=True)


def home() -> str:
    """Names the registry directory (a checkout's run directory): two with
    one lab id each see the other's objects as not their own."""
    return hashlib.sha256(str(LABS_DIR.resolve()).encode()).hexdigest()[:8]


def owner_tag(lab_id: str, pid: int, start: int | None) -> str:
    return f"netdev-harness lab={lab_id} pid={pid} start={'-' if start is None else start} home={home()}"


def parse_tag(text: str | None) -> tuple[str, int, int | None, str] | None:
    """(lab id, owner pid, owner start, home) of a tag, or None for another alias."""
    m = _TAG.fullmatch(text or "")
    if m is None:
        return None
    return m.group(1), int(m.group(2)), None if m.group(3) == "-" else int(m.group(3)), m.group(4)


def _registry_text(owner: int, start: int | None, objects) -> str:
    return json.dumps({"owner": owner, "start": start, "objects": list(objects)})


def _reserve(lab_id: str | None, owner: int, start: int | None) -> tuple[str, Path]:
    """A lab id no other lab on this host holds: its registry created
    whole and exclusively (a hard link of a complete file: a reader never
    sees it empty, and two runs never get one id)."""
    private_dir(LABS_DIR)
    tmp = temp_beside(LABS_DIR / "reserve")
    tmp.write_text(_registry_text(owner, start, []))
    try:
        for _ in range(200):
            candidate = lab_id or secrets.token_hex(2)
            registry = LABS_DIR / f"{candidate}.json"
            try:
                os.link(tmp, registry)
                return candidate, registry
            except FileExistsError:
                if lab_id:
                    raise HostNetError(f"lab id {lab_id} is taken by another lab ({registry})") from None
        raise HostNetError(f"no free lab id in {LABS_DIR} after 200 tries: remove stale labs with harness down")
    finally:
        tmp.unlink(missing_ok=True)


def _write_registry(registry: Path, owner: int, start: int | None, objects):
    write_atomic(registry, _registry_text(owner, start, objects))


def _link_tag(ipr, name: str) -> tuple[int, str | None] | None:
    """(index, alias) of link ``name``, or None when there is none."""
    for link in ipr.link("get", ifname=name) if ipr.link_lookup(ifname=name) else []:
        return link["index"], link.get_attr("IFLA_IFALIAS")
    return None


def _netns_tag(name: str) -> str | None:
    """The alias of namespace ``name``'s loopback (where a lab tags it)."""
    def read(ipr: IPRoute) -> str | None:
        links = ipr.link("get", index=ipr.link_lookup(ifname="lo")[0])
        return links[0].get_attr("IFLA_IFALIAS") if links else None
    try:
        return in_netns(name, read)
    except (NetlinkError, OSError, IndexError):
        return None


def _ours(tag_text: str | None, lab_id: str, owner: tuple[int, int | None] | None,
          untagged_ours: bool = True) -> bool:
    """Whether an object with this alias belongs to lab ``lab_id`` of
    ``owner`` (pid, start); untagged counts as ours for the lab that
    recorded it (a run killed between creating and tagging it)."""
    if not tag_text:
        return untagged_ours
    tag = parse_tag(tag_text)
    if tag is None or tag[0] != lab_id:
        return False
    return owner is None or ((tag[1], tag[2]) == owner and tag[3] == home())


def remove_objects(objects: Iterable[tuple[str, str]], lab_id: str, owner: tuple[int, int | None] | None,
                   untagged_ours: bool = True) -> None:
    """Remove a lab's recorded objects, those that are still its own:
    a name another run (or anything else) holds now is left alone."""
    ipr = IPRoute()
    try:
        for kind, name in reversed(list(objects)):
            try:
                if kind == "link":
                    found = _link_tag(ipr, name)
                    if found is not None and _ours(found[1], lab_id, owner, untagged_ours):
                        ipr.link("del", index=found[0])
                elif kind == "netns" and name in netns.listnetns() and _ours(_netns_tag(name), lab_id, owner,
                                                                             untagged_ours):
                    netns.remove(name)
            except (NetlinkError, OSError) as e:
                log.warning("could not remove %s %s: %s", kind, name, e)
    finally:
        ipr.close()


def reap_stale_labs() -> list[str]:
    """Remove the host objects of labs whose owner process is gone, and
    untracked prefixed objects whose tag names a dead owner."""
    reaped = []
    if LABS_DIR.is_dir():
        for registry in LABS_DIR.glob("*.json"):
            try:
                data = json.loads(registry.read_text())
                owner, start = int(data["owner"]), data.get("start")
                objects = [tuple(o) for o in data.get("objects", [])]
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("%s: not a lab registry; left alone", registry)
                continue
            if owner_alive(owner, start):
                continue
            remove_objects(objects, registry.stem, (owner, start))
            registry.unlink(missing_ok=True)
            reaped.append(registry.stem)
        reap_temp([LABS_DIR])  # half-made registries of dead runs

    def dead_owner(name: str, tag_text: str | None) -> tuple[int, int | None] | None:
        """(pid, start) of a stray's dead owner, or None when it is not a stray."""
        m = _OURS.match(name)
        if m is None or (LABS_DIR / f"{m.group(1)}.json").exists():
            return None  # not ours, or a live lab's (its registry is written before anything exists)
        tag = parse_tag(tag_text)
        if tag is None or tag[0] != m.group(1) or tag[3] != home() or owner_alive(tag[1], tag[2]):
            return None
        return tag[1], tag[2]

    with IPRoute() as ipr:
        links = [(link.get_attr("IFLA_IFNAME") or "", link.get_attr("IFLA_IFALIAS")) for link in ipr.link("dump")]
    strays = [("link", name, dead_owner(name, alias)) for name, alias in links]
    strays += [("netns", n, dead_owner(n, _netns_tag(n))) for n in netns.listnetns() if _OURS.match(n)]
    for kind, name, dead in strays:
        if dead is not None:  # the tag is read again there: removed only if it still names that owner
            remove_objects([(kind, name)], name[len(PREFIX):len(PREFIX) + 4], dead, untagged_ours=False)
            reaped.append(name)
    return reaped
