"""Host-side plumbing of a lab: taps, bridges, veth pairs and namespaces,
through netlink (pyroute2).

Every object is named ``nh<lab id><short name>`` (lab id: 4 hex digits) and recorded in
/run/netdev-harness/labs/<lab id>.json with the owner's pid before it is
created, so a later run reaps what a killed one left.  Addresses and routes
only ever go inside the lab's own namespaces: the host's own addresses,
routes and sysctls are never touched (new root-namespace links only get IPv6
turned off on themselves, so they stay silent).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from pathlib import Path

import threading

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from ..endpoint import DoneJob, Endpoint, Result
from ..util import RUN_ROOT, HarnessError, pid_alive

PREFIX = "nh"
_OURS = re.compile(rf"^{PREFIX}([0-9a-f]{{4}})")
LABS_DIR = RUN_ROOT / "labs"


class HostNetError(HarnessError):
    pass


def in_netns_call(name: str, fn):
    """fn() run in a thread that joined namespace ``name`` (setns(2), that
    thread only; pyroute2's own NetNS forks this multi-threaded process)."""
    box = {}

    def work():
        try:
            netns.setns(name, flags=0, fork=False)
            box["result"] = fn()
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    thread = threading.Thread(target=work, name=f"netns:{name}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")


def in_netns(name: str, fn):
    """fn(ipr) with an IPRoute inside namespace ``name``."""

    def with_iproute():
        with IPRoute() as ipr:
            return fn(ipr)

    return in_netns_call(name, with_iproute)


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

    def spawn(self, command: str) -> "HostJob":
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

    def kill(self):
        self.proc.kill()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


class HostNet:
    """The host objects of one lab; ``teardown()`` removes every one."""

    def __init__(self, lab_id: str | None = None):
        self.lab_id = lab_id or secrets.token_hex(2)
        self.registry = LABS_DIR / f"{self.lab_id}.json"
        self.objects: list[tuple[str, str]] = []  # ("link"|"netns", name) in creation order
        self.owner = os.getpid()
        self.ipr = IPRoute()

    def name(self, short: str) -> str:
        name = f"{PREFIX}{self.lab_id}{short}"
        if len(name) > 15:
            raise HostNetError(f"host interface name {name!r} is longer than 15 characters")
        return name

    def _record(self, kind: str, name: str):
        self.objects.append((kind, name))
        LABS_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.registry.with_suffix(".tmp")
        tmp.write_text(json.dumps({"owner": os.getpid(), "objects": self.objects}))
        os.replace(tmp, self.registry)

    def _index(self, ifname: str) -> int:
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            raise HostNetError(f"host link {ifname} vanished")
        return found[0]

    # -- objects ----------------------------------------------------------------
    def add_bridge(self, short: str) -> str:
        name = self.name(short)
        self._record("link", name)
        self.ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0)
        _silence_ipv6(name)
        self.ipr.link("set", index=self._index(name), state="up")
        return name

    def add_tap(self, short: str, *, queues: int = 1, mtu: int = 1500, tx_queue_len: int = 1000,
                bridge: str | None = None) -> str:
        """A persistent tap for QEMU to open; multi-queue when queues > 1."""
        name = self.name(short)
        self._record("link", name)
        self.ipr.link("add", ifname=name, kind="tuntap", mode="tap",
                      ifr={"no_pi": True, "vnet_hdr": True, "one_queue": False,
                           "multi_queue": queues > 1})
        _silence_ipv6(name)
        index = self._index(name)
        self.ipr.link("set", index=index, mtu=mtu, txqlen=tx_queue_len)
        if bridge:
            self.ipr.link("set", index=index, master=self._index(bridge))
        self.ipr.link("set", index=index, state="up")
        return name

    def add_namespace(self, short: str) -> HostNamespace:
        name = self.name(short)
        self._record("netns", name)
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)

        def setup(ipr):
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
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
        self.ipr.link("add", ifname=host_end, kind="veth", peer=tmp_end)
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

        def inside(ipr):
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

    def add_route(self, ns: HostNamespace, to: str, via: str):
        in_netns(ns.netns, lambda ipr: ipr.route(
            "add", dst="0.0.0.0/0" if to == "default" else to, gateway=via))

    def sysctl(self, ns_name: str, key: str, value: str):
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
    def teardown(self):
        if os.getpid() != self.owner:
            return  # a forked copy of the owner unwinding its stack: not ours to remove
        # A fresh socket: a failure during setup may have left self.ipr
        # waiting for a reply that will never come.
        self.ipr.close()
        remove_objects(self.objects)
        self.objects = []
        self.registry.unlink(missing_ok=True)


def remove_objects(objects):
    ipr = IPRoute()
    try:
        for kind, name in reversed(list(objects)):
            try:
                if kind == "link":
                    for index in ipr.link_lookup(ifname=name):
                        ipr.link("del", index=index)
                elif kind == "netns" and name in netns.listnetns():
                    subprocess.run(["ip", "netns", "del", name], capture_output=True)
            except (NetlinkError, OSError):
                pass
    finally:
        ipr.close()


def reap_stale_labs() -> list[str]:
    """Remove the host objects of labs whose owner process is gone, and any
    prefixed object no live lab claims."""
    reaped = []
    if LABS_DIR.is_dir():
        for registry in LABS_DIR.glob("*.json"):
            try:
                data = json.loads(registry.read_text())
            except (OSError, ValueError):
                data = {"owner": 0, "objects": []}
            if pid_alive(int(data.get("owner", 0))):
                continue
            remove_objects([tuple(o) for o in data.get("objects", [])])
            registry.unlink(missing_ok=True)
            reaped.append(registry.stem)
    # Objects no registry claims (left by a run killed after removing it).
    # Each lab writes its registry before creating anything, so checking for
    # the file after listing cannot mistake a lab being built for a stray.
    def stray(name):
        m = _OURS.match(name)
        return m is not None and not (LABS_DIR / f"{m.group(1)}.json").exists()

    with IPRoute() as ipr:
        strays = [("link", link.get("ifname")) for link in ipr.link("dump")
                  if stray(link.get("ifname") or "")]
    strays += [("netns", n) for n in netns.listnetns() if stray(n)]
    if strays:
        remove_objects(strays)
        reaped += [name for _, name in strays]
    return reaped
