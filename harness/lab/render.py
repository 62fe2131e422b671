"""What a lab renders, as pure functions of the topology model: the host
side's plan (bridges, taps, namespaces, veth pairs), a guest NIC's libvirt
XML, nginx's config, and the one shell script that configures a guest (its
NICs, sysctls, routes and containers).  Golden tests pin their output;
harness.lab.lab only runs it, on this machine or, for a nested lab, in the
guest that hosts it.
"""
from __future__ import annotations

import shlex
from xml.sax.saxutils import quoteattr

from . import model

LAB_DIR = "/run/harness/lab"   # in the guest (tmpfs)


def host_plan(topo: model.Topology) -> list[dict]:
    """The host objects of a lab, in creation order, as plain data (it
    crosses into a guest for a nested lab).  Names are the topology's
    short names; whoever applies the plan prefixes them (hostnet.HostNet)."""
    steps: list[dict] = [{"op": "bridge", "name": b.name} for b in topo.bridges]
    tap_peers = {link.peer.split(":", 1)[1] for ns in topo.host for link in ns.links
                 if link.peer.startswith("tap:")}
    mtus: dict[str, int] = {}
    for spec in topo.guests:
        for nic in spec.nics:
            bridge = nic.bridge
            if bridge is None and nic.tap in tap_peers:
                bridge = model.segment_bridge(nic.tap)  # a tap's own segment, joined by host namespaces
                steps.append({"op": "bridge", "name": bridge})
            mtus[nic.tap] = nic.mtu
            steps.append({"op": "tap", "name": nic.tap, "queues": nic.queues, "mtu": nic.mtu,
                          "tx_queue_len": nic.tx_queue_len, "bridge": bridge})
    for ns in topo.host:
        steps.append({"op": "namespace", "name": ns.name})
        for li, link in enumerate(ns.links):
            kind, target = link.peer.split(":", 1)
            steps.append({"op": "veth", "name": model.host_veth(ns.name, li), "namespace": ns.name,
                          "ifname": link.name, "bridge": target if kind == "bridge" else model.segment_bridge(target),
                          "address": link.address, "mtu": mtus.get(target) if kind == "tap" else None})
        for route in ns.routes:
            steps.append({"op": "route", "namespace": ns.name, "to": route.to, "via": route.via})
        if ns.forwarding:
            steps.append({"op": "sysctl", "namespace": ns.name, "key": "net.ipv4.ip_forward", "value": "1"})
    return steps


def nic_args(*, tap: str, mac: str, queues: int, mtu: int, index: int) -> list[str]:
    """A virtio NIC on vhost-net as QEMU arguments, for a guest under TCG:
    libvirt gives vhost-net to KVM domains only (a TCG domain silently
    gets QEMU's own backend), while QEMU runs vhost under TCG too (its
    memory core emulates the ioeventfds vhost needs)."""
    netdev = (f"tap,id=hnet{index},ifname={tap},script=no,downscript=no,vhost=on,vhostforce=on"
              + (f",queues={queues}" if queues > 1 else ""))
    # an integrated endpoint on pcie.0 at a slot of its own: QEMU creates it
    # before libvirt's root ports, which take the low slots
    device = (f"virtio-net-pci,netdev=hnet{index},id=hnic{index},mac={mac},host_mtu={mtu},"
              f"bus=pcie.0,addr={0x10 + index:#x}" + (f",mq=on,vectors={2 * queues + 2}" if queues > 1 else ""))
    return ["-netdev", netdev, "-device", device]


def nic_xml(*, tap: str, mac: str, queues: int, vhost: bool, mtu: int, nic_model: str = "virtio") -> str:
    """A NIC on a host tap that the lab made (managed='no'); an emulated
    chip (rtl8139) has no queues, vhost or MTU to set."""
    driver, mtu_xml = "", ""
    if nic_model == "virtio":
        driver = f"<driver name='{'vhost' if vhost else 'qemu'}' queues='{int(queues)}'/>"
        mtu_xml = f"<mtu size='{int(mtu)}'/>"
    return (f"<interface type='ethernet'><mac address={quoteattr(mac)}/>"
            f"<target dev={quoteattr(tap)} managed='no'/><model type='{nic_model}'/>{driver}"
            f"{mtu_xml}</interface>")


def nginx_conf(directory: str, workers: int, proxy_to: str | None) -> str:
    if proxy_to:
        target = proxy_to if ":" in proxy_to else f"{proxy_to}:80"
        site = (f"upstream backend {{ server {target}; keepalive 64; }}\n"
                "  server { listen 80 reuseport; location / { proxy_pass http://backend; "
                "proxy_http_version 1.1; proxy_set_header Connection \"\"; } }")
    else:
        site = "server { listen 80 reuseport; location / { return 200 \"ok\\n\"; } }"
    temp = " ".join(f"{k}_temp_path {directory}/{k};" for k in
                    ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"user root;\nworker_processes {workers};\npid {directory}/nginx.pid;\n"
            f"error_log {directory}/error.log;\nevents {{ worker_connections 4096; }}\n"
            f"http {{\n  access_log off;\n  default_type text/plain;\n  {temp}\n  {site}\n}}\n")


def guest_setup(spec: model.Guest, macs: list[str]) -> str:
    """The script that configures a booted guest: each NIC found by its MAC
    (``macs[i]`` is NIC i's) and named eth<i>, its queues, address and RPS
    masks; sysctls; routes; then the containers.  Few programs: under
    TCG inside TCG each exec costs seconds, so the NICs are found with
    shell builtins and configured by one ``ip -batch``."""
    q = shlex.quote
    lines = ["set -e"]
    batch: list[str] = []
    for ni, (nic, mac) in enumerate(zip(spec.nics, macs, strict=False)):
        dev = f"eth{ni}"
        if nic.model == "rtl8139":
            lines.append("modprobe -q 8139cp || true")  # a modular kernel's; built in, a no-op
        lines += [
            f"d=; for a in /sys/class/net/*/address; do read -r m < \"$a\"; "
            f"[ \"$m\" = {q(mac)} ] && d=${{a%/address}}; done",
            f'd=${{d##*/}}; [ -n "$d" ] || {{ echo "no NIC with MAC {mac}" >&2; exit 1; }}',
            f'[ "$d" = {dev} ] || ip link set dev "$d" name {dev}',
        ]
        if nic.queues > 1:
            lines.append(f"ethtool -L {dev} combined {nic.queues}")
        for queue, mask in nic.rps.items():
            lines.append(f"echo {q(mask)} > /sys/class/net/{dev}/queues/rx-{queue}/rps_cpus")
        batch.append(f"link set dev {dev} mtu {nic.mtu}")
        if nic.address:
            batch.append(f"addr add {nic.address} dev {dev}")
        batch.append(f"link set dev {dev} up")
    batch += [f"route add {route.to} via {route.via}" for route in spec.routes]
    if batch:
        lines.append(heredoc("ip -batch -", batch))
    if spec.sysctls:
        lines.append("sysctl -qw " + " ".join(q(f"{key}={value}") for key, value in spec.sysctls.items()))
    lines += container_lines(spec)
    return "\n".join(lines)


def container_lines(spec: model.Guest) -> list[str]:
    """Shell lines building the guest's containers.  Commands are batched
    (ip -batch, tc -batch: one exec per namespace instead of one per
    command, ~40 ms each under TCG)."""
    q = shlex.quote
    if not spec.containers:
        return []
    root: list[str] = [f"netns add {c.name}" for c in spec.containers]
    ip_in = {c.name: ["link set lo up"] for c in spec.containers}
    tc_in: dict[str, list[str]] = {c.name: [] for c in spec.containers}
    sysctls = {c.name: ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
               for c in spec.containers}
    guest_side: list[str] = []

    def configure(ns: str, end: model.Link) -> None:
        if end.address:
            ip_in[ns].append(f"addr add {end.address} dev {end.name}")
        if end.qdisc:
            tc_in[ns].append(f"qdisc replace dev {end.name} root {end.qdisc}")
        ip_in[ns].append(f"link set {end.name} up")

    made = set()
    for c in spec.containers:
        for li, link in enumerate(c.links):
            kind, _, target = link.peer.partition(":")
            if kind == "container":
                pair = frozenset((c.name, target))
                if pair in made:
                    continue
                made.add(pair)
                other = next(l for l in spec_container(spec, target).links
                             if l.peer == f"container:{c.name}")
                root.append(f"link add {link.name} netns {c.name} type veth "
                            f"peer name {other.name} netns {target}")
                configure(c.name, link)
                configure(target, other)
            elif kind == "guest":
                outside = model.guest_veth(c.name, li)
                root.append(f"link add {link.name} netns {c.name} type veth peer name {outside}")
                configure(c.name, link)
                if link.peer_address:
                    guest_side.append(f"addr add {link.peer_address} dev {outside}")
                guest_side.append(f"link set {outside} up")
        for route in c.routes:
            ip_in[c.name].append(f"route add {route.to} via {route.via}")
        if c.forwarding:
            sysctls[c.name].append("net.ipv4.ip_forward=1")

    def batch(tool: str, lines: list[str]) -> str:
        return heredoc(f"{tool} -batch -", lines)

    out = [batch("ip", root + guest_side)]
    for c in spec.containers:
        out.append(batch(f"ip -n {q(c.name)}", ip_in[c.name]))
        if tc_in[c.name]:
            out.append(batch(f"tc -n {q(c.name)}", tc_in[c.name]))
        out.append(f"ip netns exec {q(c.name)} sysctl -qw " + " ".join(map(q, sysctls[c.name])))
        if c.http_server or c.http_proxy:
            directory = f"{LAB_DIR}/{c.name}"
            conf = nginx_conf(directory, spec.vcpus, c.http_proxy)
            out += [f"mkdir -p {q(directory)}",
                    f"printf '%s' {q(conf)} > {q(directory + '/nginx.conf')}",
                    f"ip netns exec {q(c.name)} nginx -e {q(directory + '/error.log')} "
                    f"-c {q(directory + '/nginx.conf')}"]
    return out


def heredoc(command: str, lines: list[str], end: str = "EOF") -> str:
    """``command`` fed ``lines`` through a quoted here-document.  The model
    validates every field that goes in; this is the last word: no line may
    hold a newline or be the terminator (or it would end the document and
    the rest would run as shell)."""
    for line in lines:
        if "\n" in line or "\r" in line or line.strip() == end:
            raise ValueError(f"render: a line for {command} would end its here-document: {line!r}")
    return f"{command} <<'{end}'\n" + "\n".join(lines) + f"\n{end}"


def spec_container(spec: model.Guest, name: str) -> model.Namespace:
    return next(c for c in spec.containers if c.name == name)
