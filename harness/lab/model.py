"""Topology model: YAML labs as validated dataclasses.  No I/O beyond reading
the file, nothing created: a bad file gives one error naming the file, the
field's path (``guests[0].nics[1].queues``) and what was expected.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
import typing
from pathlib import Path

from . import yamlread
from ..kernel.needs import QDISC_OPTIONS
from ..util import GUEST_MEMORY_MB, GUEST_VCPUS, HarnessError

# matched whole (fullmatch: "$" would let a trailing newline through)
IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")   # what the kernel accepts, minus '/' ':' space
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,11}")  # guests, containers
HOST_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,7}")  # taps, bridges, host namespaces:
# prefixed with nh<lab id> on the host, and interface names have 15 characters
MAC = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}")
SYSCTL_KEY = re.compile(r"[A-Za-z0-9_]+([./][A-Za-z0-9_-]+)+")
PRINTABLE = re.compile(r"[\x20-\x7e]*")       # one line of text: a command line, a sysctl value
MAX_CMDLINE = 1024


def segment_bridge(tap: str) -> str:
    """The bridge of a tap's own segment, which host namespaces join."""
    return f"{tap}b"


def host_veth(namespace: str, index: int) -> str:
    """The root-namespace end of a host namespace's link ``index``."""
    return f"v{namespace[:5]}{index}"


def guest_veth(container: str, index: int) -> str:
    """The guest-side end of a container's link to its guest."""
    return f"v{container}{index}"[:15]


class TopologyError(HarnessError):
    def __init__(self, source: str, path: str, message: str):
        self.source, self.path = source, path
        super().__init__(f"{source}: {path}: {message}" if path else f"{source}: {message}")


# -- the model ------------------------------------------------------------------

NIC_MODELS = ("virtio", "rtl8139")

@dataclasses.dataclass(frozen=True)
class Nic:
    """A guest NIC on a host tap: virtio-net, or an emulated rtl8139."""
    tap: str                              # host tap's short name (prefixed on the host)
    model: str = "virtio"                 # virtio | rtl8139 (8139cp: TX completions freed in hard IRQ)
    queues: int = 1
    vhost: str = "auto"                   # auto | on | off
    mac: str | None = None
    mtu: int = 1500
    tx_queue_len: int = 1000
    bridge: str | None = None             # host bridge the tap joins
    address: str | None = None            # in the guest, CIDR
    rps: dict[int, str] = dataclasses.field(default_factory=dict)  # rx queue -> CPU mask (hex)


@dataclasses.dataclass(frozen=True)
class Route:
    to: str
    via: str


@dataclasses.dataclass(frozen=True)
class Link:
    """One end of a veth pair inside a namespace (host or guest container)."""
    name: str                             # interface name inside the namespace
    peer: str                             # "bridge:X", "tap:X", "container:X" or "guest"
    address: str | None = None
    peer_address: str | None = None       # the guest's end, for peer: guest
    qdisc: str | None = None              # root qdisc of this end (veth defaults to noqueue)


@dataclasses.dataclass(frozen=True)
class Namespace:
    name: str
    links: tuple[Link, ...] = ()
    routes: tuple[Route, ...] = ()
    forwarding: bool = False
    http_server: bool = False             # nginx answering on :80, one worker per vCPU
    http_proxy: str | None = None         # nginx on :80 proxying to this address[:port]


@dataclasses.dataclass(frozen=True)
class Guest:
    name: str
    vcpus: int = GUEST_VCPUS
    memory_mb: int = GUEST_MEMORY_MB
    cmdline: str = ""
    kernel: str = "default"
    sysctls: dict[str, str] = dataclasses.field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    nics: tuple[Nic, ...] = ()
    containers: tuple[Namespace, ...] = ()
    # a lab inside this guest: it runs libvirtd and QEMU from the host's
    # root and hosts the nested lab's guests, taps, bridges and namespaces
    nested: Topology | None = None

    @property
    def NEEDS(self) -> tuple[str, ...]:
        """What this guest's kernel must have for the lab to build it."""
        needs = []
        if self.nested is not None:
            needs += ["CONFIG_TUN"]
            if self.nested.bridges or self.nested.host:
                needs.append("CONFIG_BRIDGE")
            if self.nested.host:
                needs += ["CONFIG_NET_NS", "CONFIG_VETH"]
            if any(n.vhost == "on" for g in self.nested.guests for n in g.nics):
                needs.append("CONFIG_VHOST_NET")
        if self.containers:
            needs += ["CONFIG_NET_NS", "CONFIG_VETH"]
        if any(n.rps for n in self.nics):
            needs.append("CONFIG_RPS")
        if any(n.model == "rtl8139" for n in self.nics):
            needs.append("CONFIG_8139CP")
        kinds = {l.qdisc for c in self.containers for l in c.links if l.qdisc}
        if kinds:
            needs.append("CONFIG_NET_SCHED")
        needs += sorted(QDISC_OPTIONS[k] for k in kinds if k in QDISC_OPTIONS)
        return tuple(needs)


@dataclasses.dataclass(frozen=True)
class Bridge:
    name: str


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    guests: tuple[Guest, ...] = ()
    bridges: tuple[Bridge, ...] = ()
    host: tuple[Namespace, ...] = ()      # host "containers": namespaces the lab owns
    source: str = "<memory>"              # the file (not a YAML key)
    path: str = ""                        # where in it: "guests[0].nested." for a nested lab

    def guest(self, name: str) -> Guest:
        for g in self.guests:
            if g.name == name:
                return g
        raise KeyError(f"topology {self.name}: no guest {name!r}; guests: {[g.name for g in self.guests]}")

    @property
    def NEEDS(self) -> tuple[str, ...]:
        """What the guests' kernels must have (every guest's needs)."""
        return tuple(dict.fromkeys(n for g in self.guests for n in g.NEEDS))


# -- loading and validation --------------------------------------------------------

def load(path) -> Topology:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TopologyError(str(path), "", f"cannot read ({e.strerror})") from None
    try:
        text = yamlread.decode(data)
    except yamlread.ReadError as e:
        raise TopologyError(str(path), e.where, e.message) from None
    return parse(text, str(path))


def parse(text: str, source: str = "<string>") -> Topology:
    try:
        data = yamlread.read(text)
    except yamlread.ReadError as e:
        raise TopologyError(source, e.where, e.message) from None
    return from_data(data, source)


def from_data(data, source: str = "<memory>") -> Topology:
    """The model of plain data in the YAML file's shape (what ``yamlread``
    gives, or what ``topo.Topo`` builds), validated as a file is."""
    if not isinstance(data, dict):
        raise TopologyError(source, "", "expected a mapping with name, guests, bridges, host")
    topo = _placed(_build(Topology, data, source, ""), source, "")
    _check_references(topo)
    return topo


INTERNAL = ("source", "path")  # fields the loader sets, never read from YAML


def _placed(topo: Topology, source: str, path: str) -> Topology:
    """``topo`` and the labs nested in its guests, told which file and
    which place in it they come from (errors and relative paths use it)."""
    guests = tuple(dataclasses.replace(g, nested=_placed(g.nested, source, f"{path}guests[{gi}].nested."))
                   if g.nested is not None else g for gi, g in enumerate(topo.guests))
    return dataclasses.replace(topo, guests=guests, source=source, path=path)


def _build(cls, data, source: str, path: str):
    """Construct dataclass ``cls`` from ``data``, checking keys and types."""
    if not isinstance(data, dict):
        raise TopologyError(source, path or "(top)", f"expected a mapping, got {_kind(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in INTERNAL}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise TopologyError(source, where, f"unknown key; expected one of {sorted(fields)}")
    values = {}
    for name, field in fields.items():
        where = f"{path}.{name}" if path else name
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise TopologyError(source, where, "required")
            continue
        values[name] = _convert(hints[name], data[name], source, where)
    obj = cls(**values)
    _check_values(obj, source, path)
    return obj


def _convert(hint, value, source, where):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        return _convert(hint, value, source, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise TopologyError(source, where, f"expected a list, got {_kind(value)}")
        return tuple(_convert(args[0], v, source, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise TopologyError(source, where, f"expected a mapping, got {_kind(value)}")
        return {_convert(args[0], k, source, f"{where}.{k}"): _convert(args[1], v, source, f"{where}.{k}")
                for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise TopologyError(source, where, f"expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TopologyError(source, where, f"expected an integer, got {_kind(value)}")
        return value
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # sysctl values, masks written as numbers
        if not isinstance(value, str):
            raise TopologyError(source, where, f"expected a string, got {_kind(value)}")
        return value
    raise TypeError(f"model: no conversion for {hint}")


def _kind(value) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"the string {value!r}", bool: str(value).lower(),
            int: f"the number {value}", float: f"the number {value}"}.get(type(value), type(value).__name__)


def _check_values(obj, source, path):
    def bad(field: str, message: str) -> typing.NoReturn:
        raise TopologyError(source, f"{path}.{field}" if path else field, message)

    if isinstance(obj, Guest) and not NAME.fullmatch(obj.name):
        bad("name", f"{obj.name!r} is not a valid name: expected a letter then up to 11 "
                    "letters, digits, '_' or '-'")
    if isinstance(obj, (Bridge, Namespace)) and not (NAME if ".containers[" in path else HOST_NAME).fullmatch(obj.name):
        longest = 11 if ".containers[" in path else 7
        bad("name", f"{obj.name!r} is not a valid name: expected a letter then up to {longest} "
                    "letters, digits, '_' or '-'" + ("" if longest == 11 else
                    " (host objects are prefixed into 15-character interface names)"))
    if isinstance(obj, Topology) and not NAME.fullmatch(obj.name):
        bad("name", f"{obj.name!r}: expected a letter then up to 11 letters, digits, '_' or '-'")
    if isinstance(obj, Guest):
        if not 1 <= obj.vcpus <= 64:
            bad("vcpus", f"expected 1 to 64, got {obj.vcpus}")
        if not 128 <= obj.memory_mb <= 65536:
            bad("memory_mb", f"expected 128 to 65536, got {obj.memory_mb}")
        if not PRINTABLE.fullmatch(obj.cmdline) or len(obj.cmdline) > MAX_CMDLINE:
            bad("cmdline", f"expected one line of printable text under {MAX_CMDLINE} characters")
        if not re.fullmatch(r"[\x21-\x7e]+", obj.kernel):
            bad("kernel", f"expected default, debian or a path without spaces, got {obj.kernel!r}")
        for key, value in obj.sysctls.items():
            if not SYSCTL_KEY.fullmatch(key):
                bad(f"sysctls.{key}", "expected a sysctl name like net.core.netdev_max_backlog")
            if not PRINTABLE.fullmatch(value):
                bad(f"sysctls.{key}", f"expected one line of printable text, got {value!r}")
    if isinstance(obj, Nic):
        if not HOST_NAME.fullmatch(obj.tap):
            bad("tap", f"{obj.tap!r} is not a valid name: expected a letter then up to 7 "
                       "letters, digits, '_' or '-' (prefixed into a 15-character interface name)")
        if not 1 <= obj.queues <= 16:
            bad("queues", f"expected 1 to 16, got {obj.queues}")
        if obj.vhost not in ("auto", "on", "off"):
            bad("vhost", f"expected auto, on or off, got {obj.vhost!r}")
        if obj.model not in NIC_MODELS:
            bad("model", f"expected one of {', '.join(NIC_MODELS)}, got {obj.model!r}")
        if obj.model != "virtio":
            # one queue, QEMU's own backend, the Ethernet MTU: what the emulated chip has
            for field, got, only in (("queues", obj.queues, 1), ("vhost", obj.vhost, "off"), ("mtu", obj.mtu, 1500)):
                if got not in (only, "auto"):
                    bad(field, f"a {obj.model} NIC has {only}, got {got!r}")
        if obj.mac is not None and not MAC.fullmatch(obj.mac.lower()):
            bad("mac", f"expected six hex pairs like 52:54:00:12:34:56, got {obj.mac!r}")
        if not 68 <= obj.mtu <= 65535:
            bad("mtu", f"expected 68 to 65535, got {obj.mtu}")
        if not 1 <= obj.tx_queue_len <= 1 << 20:
            bad("tx_queue_len", f"expected 1 to 1048576, got {obj.tx_queue_len}")
        for queue, mask in obj.rps.items():
            if not 0 <= queue < obj.queues:
                bad(f"rps.{queue}", f"no rx queue {queue}: the NIC has {obj.queues}")
            if not re.fullmatch(r"[0-9a-fA-F,]+", mask):
                bad(f"rps.{queue}", f"expected a hex CPU mask like 2 or ff, got {mask!r}")
        if obj.address is not None:
            _interface(obj.address, source, f"{path}.address")
    if isinstance(obj, Link):
        if not IFNAME.fullmatch(obj.name):
            bad("name", f"{obj.name!r} is not a valid interface name: expected 1 to 15 "
                        "letters, digits, '_', '.' or '-' (no '/', ':' or spaces)")
        if not re.fullmatch(r"(bridge|tap|container):[A-Za-z0-9_-]+|guest", obj.peer):
            bad("peer", f"expected bridge:NAME, tap:NAME, container:NAME or guest, got {obj.peer!r}")
        if obj.address is not None:
            _interface(obj.address, source, f"{path}.address")
        if obj.qdisc is not None and not re.fullmatch(r"[a-z_]+", obj.qdisc):
            bad("qdisc", f"expected a qdisc kind like pfifo_fast or fq_codel, got {obj.qdisc!r}")
        if obj.peer_address is not None:
            if obj.peer != "guest":
                bad("peer_address", "only for peer: guest (other peers give their own address)")
            _interface(obj.peer_address, source, f"{path}.peer_address")
    if isinstance(obj, Namespace) and obj.http_proxy is not None:
        target = obj.http_proxy.rsplit(":", 1)
        try:
            if not _plain_address(obj.http_proxy):
                raise ValueError
            ipaddress.ip_address(target[0])
            if len(target) == 2 and not 0 < int(target[1]) < 65536:
                raise ValueError
        except ValueError:
            bad("http_proxy", f"expected ADDRESS or ADDRESS:PORT, got {obj.http_proxy!r}")
    if isinstance(obj, Route):
        try:
            if obj.to != "default" and not _plain_address(obj.to):
                raise ValueError
            ipaddress.ip_network(obj.to if obj.to != "default" else "0.0.0.0/0")
        except ValueError:
            bad("to", f"expected a network like 10.0.2.0/24 or default, got {obj.to!r}")
        try:
            if not _plain_address(obj.via):
                raise ValueError
            ipaddress.ip_address(obj.via)
        except ValueError:
            bad("via", f"expected an address (no IPv6 scope id), got {obj.via!r}")


def _plain_address(text: str) -> bool:
    """Digits, letters, '.', ':', '/' only: Python's ipaddress accepts an
    IPv6 scope id ("fe80::1%anything") with any text in it."""
    return re.fullmatch(r"[0-9A-Fa-f.:/]+", text) is not None


def _interface(text, source, where):
    try:
        if not _plain_address(text):
            raise ValueError
        return ipaddress.ip_interface(text)
    except ValueError:
        raise TopologyError(source, where, f"expected an address with prefix like 10.0.0.1/24, "
                                           f"got {text!r}") from None


def _check_references(topo: Topology):
    src, at = topo.source, topo.path

    def unique(items: typing.Sequence[Guest | Bridge | Namespace], path: str, what: str) -> None:
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.name in seen:
                raise TopologyError(src, f"{at}{path}[{i}].name",
                                    f"{what} {item.name!r} is already defined at {at}{path}[{seen[item.name]}]")
            seen[item.name] = i

    unique(topo.guests, "guests", "guest")
    unique(topo.bridges, "bridges", "bridge")
    unique(topo.host, "host", "namespace")
    for gi, guest in enumerate(topo.guests):
        if guest.nested is not None:
            if at:
                raise TopologyError(src, f"{at}guests[{gi}].nested", "a nested lab's guests cannot host labs "
                                                                     "of their own (one level of nesting)")
            _check_host_memory(guest, src, f"{at}guests[{gi}]")
            _check_references(guest.nested)
    bridges = {b.name for b in topo.bridges}
    taps: dict[str, str] = {}
    for gi, guest in enumerate(topo.guests):
        unique(guest.containers, f"guests[{gi}].containers", "container")
        for ni, nic in enumerate(guest.nics):
            where = f"{at}guests[{gi}].nics[{ni}]"
            if nic.tap in taps:
                raise TopologyError(src, f"{where}.tap", f"tap {nic.tap!r} is already used by {taps[nic.tap]}")
            taps[nic.tap] = where
            if nic.bridge is not None and nic.bridge not in bridges:
                raise TopologyError(src, f"{where}.bridge",
                                    f"no bridge {nic.bridge!r}; defined: {sorted(bridges) or 'none'}")
        for ci, ns in enumerate(guest.containers):
            _check_links(src, f"{at}guests[{gi}].containers[{ci}]", ns, guest=guest)
        _check_guest_names(src, f"{at}guests[{gi}]", guest)
    for hi, ns in enumerate(topo.host):
        _check_links(src, f"{at}host[{hi}]", ns, bridges=bridges, taps=set(taps))
    _check_host_names(topo)
    _check_subnets(topo)


def _check_links(src, path, ns: Namespace, *, guest: Guest | None = None, bridges=frozenset(), taps=frozenset()):
    """Where each link of ``ns`` goes: a container's (``guest`` given) to
    its guest or to another container that links back exactly once; a
    host namespace's to a bridge or a tap's segment."""
    names: dict[str, int] = {}
    for li, link in enumerate(ns.links):
        if link.name in names:
            raise TopologyError(src, f"{path}.links[{li}].name",
                                f"{link.name!r} is already the name of {path}.links[{names[link.name]}]")
        names[link.name] = li
        where = f"{path}.links[{li}].peer"
        kind, _, target = link.peer.partition(":")
        if guest is None:
            if kind == "bridge" and target not in bridges:
                raise TopologyError(src, where, f"no bridge {target!r}; defined: {sorted(bridges) or 'none'}")
            if kind == "tap" and target not in taps:
                raise TopologyError(src, where, f"no tap {target!r}; defined: {sorted(taps) or 'none'}")
            if kind not in ("bridge", "tap"):
                raise TopologyError(src, where, f"a host namespace links to bridge:NAME or tap:NAME, "
                                                f"got {link.peer!r}")
            continue
        if kind in ("bridge", "tap"):
            raise TopologyError(src, where, f"no {kind} {target!r} in a guest (bridges and taps are on the "
                                            "host; a container links to guest or container:NAME)")
        if kind != "container":
            continue
        others = {c.name: c for c in guest.containers}
        if target not in others or target == ns.name:
            raise TopologyError(src, where, f"no other container {target!r}; defined: {sorted(others)}")
        if sum(1 for l in ns.links if l.peer == link.peer) > 1:
            raise TopologyError(src, where, f"a second link to container {target!r} (one veth pair per two "
                                            "containers)")
        back = sum(1 for l in others[target].links if l.peer == f"container:{ns.name}")
        if back != 1:
            raise TopologyError(src, where, f"container {target!r} has {'no' if not back else back} "
                                            f"link{'s' if back > 1 else ''} back to container:{ns.name}; "
                                            "a veth pair has two ends: expected exactly one")


def _check_guest_names(src, path, guest: Guest):
    """The links a guest's containers put in its root namespace (their
    guest-side ends) are distinct, and not one of its NICs' names."""
    taken = {f"eth{i}": f"{path}.nics[{i}]" for i in range(len(guest.nics))} | {"lo": "the loopback"}
    for ci, c in enumerate(guest.containers):
        for li, link in enumerate(c.links):
            if link.peer != "guest":
                continue
            name, where = guest_veth(c.name, li), f"{path}.containers[{ci}].links[{li}]"
            if name in taken:
                raise TopologyError(src, where, f"its guest-side end would be named {name!r}, as is "
                                                f"{taken[name]}: rename the container")
            taken[name] = where


def _check_host_names(topo: Topology):
    """Every host object the lab makes (render.host_plan) has a name of its
    own: a declared bridge named like a tap's segment or a namespace's veth
    end would be the same link twice."""
    src, at = topo.source, topo.path
    taken: dict[str, str] = {}

    def claim(name: str, where: str, what: str) -> None:
        if name in taken:
            raise TopologyError(src, where, f"{what} would be named {name!r} on the host, as is "
                                            f"{taken[name]}: rename one")
        taken[name] = where

    for bi, bridge in enumerate(topo.bridges):
        claim(bridge.name, f"{at}bridges[{bi}].name", "this bridge")
    tap_peers = {l.peer.split(":", 1)[1] for ns in topo.host for l in ns.links if l.peer.startswith("tap:")}
    for gi, guest in enumerate(topo.guests):
        for ni, nic in enumerate(guest.nics):
            where = f"{at}guests[{gi}].nics[{ni}].tap"
            claim(nic.tap, where, "this tap")
            if nic.bridge is None and nic.tap in tap_peers:
                claim(segment_bridge(nic.tap), where, "this tap's segment bridge")
    for hi, ns in enumerate(topo.host):
        for li, _ in enumerate(ns.links):
            end = host_veth(ns.name, li)
            claim(end, f"{at}host[{hi}].links[{li}]", "this link's host end")
            claim(end + "x", f"{at}host[{hi}].links[{li}]", "this link's temporary end")


# what a guest hosting a nested lab needs besides its nested guests' memory:
# libvirtd, virtlogd, the nest server (python) and QEMU's own, per guest
NESTING_OVERHEAD_MB = 384
PER_NESTED_GUEST_MB = 128


def _check_host_memory(guest: Guest, src: str, path: str):
    assert guest.nested is not None
    inner = guest.nested.guests
    need = NESTING_OVERHEAD_MB + sum(g.memory_mb + PER_NESTED_GUEST_MB for g in inner)
    if guest.memory_mb < need:
        raise TopologyError(src, f"{path}.memory_mb",
                            f"{guest.memory_mb} MiB cannot host its nested guests ({sum(g.memory_mb for g in inner)} "
                            f"MiB of guests, {PER_NESTED_GUEST_MB} MiB of QEMU each, {NESTING_OVERHEAD_MB} for "
                            f"libvirtd and the nest server): expected at least {need}")


def _check_subnets(topo: Topology):
    """Subnets of different segments must not overlap (or routing is ambiguous)."""
    nets = []  # (network, path)
    for gi, guest in enumerate(topo.guests):
        for ni, nic in enumerate(guest.nics):
            if nic.address:
                nets.append((ipaddress.ip_interface(nic.address).network, f"{topo.path}guests[{gi}].nics[{ni}].address",
                             f"bridge:{nic.bridge}" if nic.bridge else f"tap:{nic.tap}"))
    for hi, ns in enumerate(topo.host):
        for li, link in enumerate(ns.links):
            if link.address:
                nets.append((ipaddress.ip_interface(link.address).network,
                             f"{topo.path}host[{hi}].links[{li}].address", link.peer))
    for i, (net, path, segment) in enumerate(nets):
        for other, other_path, other_segment in nets[:i]:
            if segment != other_segment and net.overlaps(other):
                raise TopologyError(topo.source, path, f"subnet {net} overlaps {other} of "
                                                       f"{other_path} on another segment")
