"""A topology written in Python, read like the network it describes (as
Mininet's ``Topo`` is): guests, their NICs and containers, veth pairs
between two ends.  It builds the plain data a YAML file holds and goes
through the same validation (``model.from_data``), so a ``Topo`` and the
equivalent file give the same model::

    t = Topo("proxy-hops")
    g1 = t.guest("g1", vcpus=2, memory_mb=768)
    client, proxy = g1.container("client"), g1.container("proxy", http_proxy="10.77.3.2:80")
    server = g1.container("server", http_server=True)
    t.veth(client.end("c0", "10.77.2.2/24"), proxy.end("p0", "10.77.2.1/24"), qdisc="pfifo_fast")
    t.veth(proxy.end("p1", "10.77.3.1/24"), server.end("s0", "10.77.3.2/24"), qdisc="pfifo_fast")
    lab = lab(t)          # the pytest fixture takes a Topo, a name or a path
"""
from __future__ import annotations

import dataclasses
from typing import Any

from . import model


@dataclasses.dataclass
class End:
    """One end of a veth pair: an interface in a container."""
    container: Container
    name: str
    address: str | None = None


class _Node:
    """A named part of the topology: its plain data, as YAML holds it."""

    def __init__(self, data: dict[str, Any]):
        self.data = data

    @property
    def name(self) -> str:
        return self.data["name"]

    def route(self, to: str, via: str) -> _Node:
        self.data.setdefault("routes", []).append({"to": to, "via": via})
        return self


class Container(_Node):
    """A network namespace inside a guest, or one on the lab's host side."""

    def end(self, ifname: str, address: str | None = None) -> End:
        return End(self, ifname, address)

    def link(self, ifname: str, peer: str, address: str | None = None, **options: Any) -> Container:
        """A link to a bridge (``bridge:X``), a tap (``tap:X``) or its guest
        (``guest``, with ``peer_address``): what ``links:`` says in YAML."""
        self.data.setdefault("links", []).append(_set(name=ifname, peer=peer, address=address, **options))
        return self


class GuestNode(_Node):
    """A guest: its NICs, its containers, a lab nested in it."""

    def nic(self, tap: str, **options: Any) -> GuestNode:
        """A NIC on host tap ``tap`` (model, queues, vhost, bridge, address, rps, ...)."""
        self.data.setdefault("nics", []).append(_set(tap=tap, **options))
        return self

    def container(self, name: str, **options: Any) -> Container:
        data = _set(name=name, **options)
        self.data.setdefault("containers", []).append(data)
        return Container(data)

    def nested(self, topo: Topo) -> GuestNode:
        """A lab inside this guest."""
        self.data["nested"] = topo.data()
        return self


class Topo:
    def __init__(self, name: str):
        self._data: dict[str, Any] = {"name": name}

    def guest(self, name: str, **options: Any) -> GuestNode:
        data = _set(name=name, **options)
        self._data.setdefault("guests", []).append(data)
        return GuestNode(data)

    def bridge(self, name: str) -> str:
        self._data.setdefault("bridges", []).append({"name": name})
        return name

    def host_namespace(self, name: str, **options: Any) -> Container:
        """A namespace on the lab's host side (YAML's ``host:``)."""
        data = _set(name=name, **options)
        self._data.setdefault("host", []).append(data)
        return Container(data)

    def veth(self, a: End, b: End, **options: Any) -> None:
        """A veth pair between two containers' ends; ``options`` (qdisc) go to both."""
        a.container.link(a.name, f"container:{b.container.name}", a.address, **options)
        b.container.link(b.name, f"container:{a.container.name}", b.address, **options)

    def data(self) -> dict[str, Any]:
        """The plain data a YAML file of this topology would hold."""
        return self._data

    def build(self, source: str = "<python>") -> model.Topology:
        return model.from_data(self._data, source)


def _set(**fields: Any) -> dict[str, Any]:
    """The fields given, without those left at None (YAML leaves them out)."""
    return {k: v for k, v in fields.items() if v is not None}
