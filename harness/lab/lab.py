"""A topology brought up: host plumbing, guests, and containers inside them.

    lab = Lab.from_yaml("topologies/proxy-hops.yaml", kernel=kernel, accel="tcg")
    with lab:
        lab.container("g1", "client").check("curl -s http://10.77.2.1/")

Data flows one way: the model (harness.lab.model) says what to build; hostnet
builds the host side; guests boot with NICs on the lab's taps; a generated
script configures each guest; then every declared address is pinged from its
segment before up() returns.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import model, render
from ..kernel.needs import MissingKernelFeature, unmet
from ..endpoint import Endpoint
from ..vm.guest import Guest
from .hosts import Container, LabHost, LocalHost, Plumbing
from ..kernel.kernel import Kernel
from ..util import HarnessError, teardown_section


log = logging.getLogger(__name__)


class LabError(HarnessError):
    pass


def _mac(lab_id: str, guest_index: int, nic_index: int) -> str:
    return f"52:54:{lab_id[:2]}:{lab_id[2:4]}:{guest_index:02x}:{nic_index:02x}"


class Lab:
    """One topology, up or down.  ``up()`` undoes its own work if it fails."""

    def __init__(self, topology: model.Topology, *, kernel: Kernel, accel: str = "tcg",
                 log_dir: Path | None = None, kernels: dict[str, Kernel] | None = None, host: LabHost | None = None):
        self.topology = topology
        self.kernel = kernel
        self.kernels = kernels or {}
        self.accel = accel
        self.log_dir = log_dir
        # where the host side lives: this machine, or the guest hosting a
        # nested lab (harness.lab.nest.GuestHost)
        self.host: LabHost = host or LocalHost()
        self.plumbing: Plumbing | None = None
        self.guests: dict[str, Guest] = {}
        self.nested_labs: dict[str, Lab] = {}   # guest name -> the lab it hosts
        self.host_namespaces: dict[str, Endpoint] = {}
        self.taps: dict[str, str] = {}          # topology tap -> host tap name
        self.backends: dict[str, str] = {}      # topology tap -> "vhost" | "userspace"
        self.up_seconds: float | None = None
        self._owner = os.getpid()
        self._kernels: dict[str, Kernel] = {}  # guest name -> its kernel, resolved once

    @classmethod
    def from_yaml(cls, path, **kw) -> Lab:
        return cls(model.load(path), **kw)

    # -- access -----------------------------------------------------------------
    def guest(self, name: str) -> Guest:
        try:
            return self.guests[name]
        except KeyError:
            raise LabError(f"lab {self.topology.name}: no guest {name!r}; "
                           f"guests: {sorted(self.guests)}") from None

    def host_ns(self, name: str) -> Endpoint:
        try:
            return self.host_namespaces[name]
        except KeyError:
            raise LabError(f"lab {self.topology.name}: no host namespace {name!r}; "
                           f"namespaces: {sorted(self.host_namespaces)}") from None

    def container(self, guest: str, name: str) -> Container:
        self.guest(guest)  # a LabError naming the guests when there is no such guest
        spec = self.topology.guest(guest)
        if name not in {c.name for c in spec.containers}:
            raise LabError(f"lab {self.topology.name}: guest {guest} has no container {name!r}")
        return Container(self.guest(guest), name)

    def where(self, name: str) -> Endpoint:
        """An endpoint by name, as `harness up` takes it: GUEST,
        GUEST/CONTAINER, host/NAMESPACE, and GUEST>... inside the lab that
        GUEST hosts (host1>n1, host1>host/peer)."""
        outer, nested, rest = name.partition(">")
        if nested:
            return self.nested(outer.strip()).where(rest)
        parts = [p.strip() for p in name.split("/")]
        if parts[0] == "host" and len(parts) == 2:
            return self.host_ns(parts[1])
        if len(parts) == 2:
            return self.container(parts[0], parts[1])
        return self.guest(parts[0])

    def nested(self, guest: str) -> Lab:
        """The lab that guest ``guest`` hosts (its ``nested:`` topology)."""
        try:
            return self.nested_labs[guest]
        except KeyError:
            raise LabError(f"lab {self.topology.name}: guest {guest!r} hosts no nested lab; "
                           f"hosts: {sorted(self.nested_labs) or 'none'}") from None

    @property
    def all_guests(self) -> list[Guest]:
        """The lab's guests and those of the labs nested in them."""
        return [*self.guests.values(), *(g for lab in self.nested_labs.values() for g in lab.all_guests)]

    @property
    def lab_id(self) -> str:
        return self.plumbing.lab_id if self.plumbing else "----"

    # -- lifecycle ----------------------------------------------------------------
    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()

    def up(self) -> Lab:
        t0 = time.monotonic()
        try:
            self._check_environment()
            with self._phase("host side"):
                nics = self._host_side()
            with self._phase("guests booted"):
                self._boot_guests(nics)
            with self._phase("guests configured"):
                for spec in self.topology.guests:
                    self._configure_guest(spec)
            with self._phase("addresses answer"):
                self._wait_reachable()
            for spec in self.topology.guests:
                if spec.nested is not None:
                    with self._phase(f"nested lab in {spec.name}"):
                        self._up_nested(spec)
        except BaseException:
            self.down()
            raise
        self.up_seconds = time.monotonic() - t0
        log.info("lab %s: up in %.1fs", self.topology.name, self.up_seconds)
        return self

    @contextlib.contextmanager
    def _phase(self, what: str):
        t0 = time.monotonic()
        yield
        log.info("lab %s: %s in %.1fs", self.topology.name, what, time.monotonic() - t0)

    def down(self) -> None:
        if os.getpid() != self._owner:
            return  # a forked copy of the owner unwinding its stack: not ours to remove
        with teardown_section():
            self._down()

    def _down(self):
        nested, self.nested_labs = list(self.nested_labs.values()), {}
        for lab in nested:  # inside guests that are still up: they leave nothing there either
            lab.down()
        guests, self.guests = list(self.guests.values()), {}
        if guests:
            with ThreadPoolExecutor(len(guests)) as pool:
                list(pool.map(lambda g: g.stop(), guests))
        self.host.teardown()
        self.plumbing = None
        self.host_namespaces = {}

    def _check_environment(self):
        for spec in self.topology.guests:
            kernel = self._kernel_for(spec)  # a bad kernel path fails before anything is created
            reasons = unmet(kernel, spec.NEEDS)
            if reasons:
                raise MissingKernelFeature(f"lab {self.topology.name}: guest {spec.name}: {'; '.join(reasons)}")
        missing = self.host.vhost_missing(self.accel)
        for gi, spec in enumerate(self.topology.guests):
            for ni, nic in enumerate(spec.nics):
                if nic.vhost == "on" and missing:
                    raise LabError(f"{self.topology.source}: {self.topology.path}guests[{gi}].nics[{ni}].vhost: "
                                   f"on, but {missing}; or use vhost: auto")

    def _host_side(self) -> dict[str, tuple[list[str], list[str]]]:
        """Bridges, taps and host namespaces; returns each guest's NICs:
        (libvirt XML, QEMU arguments)."""
        self.plumbing = plumbing = self.host.plumb(render.host_plan(self.topology))
        vhost_net = self.host.vhost_missing(self.accel) is None
        nics: dict[str, tuple[list[str], list[str]]] = {}
        for gi, spec in enumerate(self.topology.guests):
            xml, args = nics[spec.name] = ([], [])
            for ni, nic in enumerate(spec.nics):
                tap = self.taps[nic.tap] = plumbing.links[nic.tap]
                vhost = nic.model == "virtio" and nic.vhost != "off" and vhost_net
                self.backends[nic.tap] = "vhost" if vhost else "userspace"
                mac = self._mac(gi, ni, nic)
                if vhost and self.accel != "kvm":
                    args += render.nic_args(tap=tap, mac=mac, queues=nic.queues, mtu=nic.mtu, index=ni)
                else:
                    xml.append(render.nic_xml(tap=tap, mac=mac, queues=nic.queues, vhost=vhost, mtu=nic.mtu,
                                              nic_model=nic.model))
        self.host_namespaces = {short: self.host.namespace(netns, short)
                                for short, netns in plumbing.namespaces.items()}
        return nics

    def _kernel_for(self, spec: model.Guest) -> Kernel:
        """default, a name given to Lab(kernels=...), or a bzImage / build
        directory (relative to the topology file)."""
        if spec.name not in self._kernels:
            self._kernels[spec.name] = self._resolve_kernel(spec)
        return self._kernels[spec.name]

    def _resolve_kernel(self, spec: model.Guest) -> Kernel:
        if spec.kernel == "default":
            return self.kernel
        if spec.kernel == "debian":  # Debian's, whatever the lab's default is (an A/B of host kernels)
            return Kernel.default()
        if spec.kernel == "minimal":  # the smallest guest kernel (nested guests: every boot instruction counts)
            from ..kernel.build import minimal_kernel
            built = minimal_kernel()
            if built is None:
                raise MissingKernelFeature(
                    f"lab {self.topology.name}: guest {spec.name} needs the minimal guest kernel (kernel: minimal), "
                    "which is not built: tools/setup builds it (harness build-kernel --debian-source 6.12 --minimal)")
            return Kernel.from_path(built)
        if spec.kernel in self.kernels:
            return self.kernels[spec.kernel]
        path = Path(spec.kernel)
        if not path.is_absolute() and self.topology.source not in ("<string>", "<memory>", "<python>"):
            path = Path(self.topology.source).parent / path
        gi = self.topology.guests.index(spec)
        try:
            return Kernel.from_path(path)
        except HarnessError as e:
            raise LabError(f"{self.topology.source}: {self.topology.path}guests[{gi}].kernel: {e}") from None

    def _mac(self, gi: int, ni: int, nic: model.Nic) -> str:
        return nic.mac or _mac(self.lab_id, gi, ni)

    def _boot_guests(self, nics: dict[str, tuple[list[str], list[str]]]):
        errors: list[BaseException] = []
        lab_id = self.lab_id

        def boot(spec: model.Guest) -> None:
            kernel = self._kernel_for(spec)
            guest = Guest(f"{spec.name}-{lab_id}", kernel, vcpus=spec.vcpus,
                          memory_mb=spec.memory_mb, cmdline=spec.cmdline, accel=self.accel,
                          log_dir=self.log_dir, interfaces=nics[spec.name][0], qemu_args=nics[spec.name][1],
                          hypervisor=self.host.hypervisor, speed_scale=self.host.speed_scale)
            with lock:
                self.guests[spec.name] = guest  # stopped by down() even if start fails
            try:
                guest.start()
            except BaseException as e:
                errors.append(e)

        lock = threading.Lock()
        threads = [threading.Thread(target=boot, args=(s,)) for s in self.topology.guests]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        self._check_backends()

    def _check_backends(self):
        """The backends reported are the ones QEMU runs: it holds one
        vhost-net descriptor per queue pair of each vhost NIC, none else."""
        for spec in self.topology.guests:
            want = sum(n.queues for n in spec.nics if self.backends[n.tap] == "vhost")
            held = self.guests[spec.name].domain.vhost_fds()
            if held != want:
                raise LabError(f"lab {self.topology.name}: guest {spec.name}: QEMU holds {held} vhost-net "
                               f"descriptors, expected {want} (backends {self.backends})")

    def _up_nested(self, spec: model.Guest):
        """The lab ``spec`` hosts: libvirtd and the nest server started in
        the guest, then the same Lab code, with that guest as its host."""
        from .nest import GuestHost
        assert spec.nested is not None
        host = GuestHost(self.guests[spec.name], log_dir=self.log_dir)
        inner = Lab(spec.nested, kernel=self.kernel, kernels=self.kernels, log_dir=self.log_dir,
                    host=host)
        self.nested_labs[spec.name] = inner  # torn down by down() even if up() fails
        host.start(accel=self.accel, kernels=[inner._kernel_for(g) for g in spec.nested.guests])
        inner.accel = host.accel
        inner.up()

    # -- inside a guest ----------------------------------------------------------------
    def _configure_guest(self, spec: model.Guest):
        gi = self.topology.guests.index(spec)
        macs = [self._mac(gi, ni, nic) for ni, nic in enumerate(spec.nics)]
        self.guests[spec.name].check(render.guest_setup(spec, macs), timeout=120)

    # -- reachability ---------------------------------------------------------------------
    def endpoints(self) -> dict[str, list[tuple[Endpoint, str]]]:
        """Every declared address by segment: {segment: [(where, address)]}."""
        topo = self.topology
        segments: dict[str, list[tuple[Endpoint, str]]] = {}

        def add(segment: str, where: Endpoint, address: str | None) -> None:
            if address:
                segments.setdefault(segment, []).append((where, address.split("/")[0]))

        for spec in topo.guests:
            for nic in spec.nics:
                add(f"bridge:{nic.bridge}" if nic.bridge else f"tap:{nic.tap}",
                    self.guests[spec.name], nic.address)
            for c in spec.containers:
                for li, link in enumerate(c.links):
                    kind, _, target = link.peer.partition(":")
                    where = Container(self.guests[spec.name], c.name)
                    if kind == "container":
                        add(f"{spec.name}:{'|'.join(sorted((c.name, target)))}", where, link.address)
                    elif kind == "guest":
                        segment = f"{spec.name}:{c.name}:{li}"
                        add(segment, where, link.address)
                        add(segment, self.guests[spec.name], link.peer_address)
        for ns_spec in topo.host:
            for link in ns_spec.links:
                add(link.peer, self.host_namespaces[ns_spec.name], link.address)
        return segments

    def _wait_reachable(self, timeout_s: int = 30):
        for segment, members in self.endpoints().items():
            if len(members) < 2:
                continue
            where, _ = members[0]
            for _, address in members[1:]:
                probe = (f"i=0; while [ $i -lt {timeout_s * 5} ]; do "
                         f"ping -c1 -W1 -q {shlex.quote(address)} >/dev/null 2>&1 && exit 0; "
                         f"i=$((i+1)); sleep 0.2; done; exit 1")
                if where.run(probe, timeout=timeout_s + 30).rc != 0:
                    raise LabError(f"lab {self.topology.name}: {address} on segment {segment} "
                                   f"does not answer from {where!r}")

    def describe(self) -> str:
        lines = [f"lab {self.topology.name} (id {self.lab_id})"]
        for name, guest in self.guests.items():
            lines.append(f"  guest {name}: {guest.domain_name}, kernel {guest.release}")
        for tap, host_tap in self.taps.items():
            lines.append(f"  tap {tap}: {host_tap} ({self.backends[tap]})")
        for name, netns in (self.plumbing.namespaces if self.plumbing else {}).items():
            lines.append(f"  host namespace {name}: {netns}")
        for spec in self.topology.guests:
            for c in spec.containers:
                lines.append(f"  container {spec.name}/{c.name}")
        for name, lab in self.nested_labs.items():
            lines += [f"  in guest {name}: " + lab.describe().splitlines()[0]]
            lines += ["    " + line for line in lab.describe().splitlines()[1:]]
        return "\n".join(lines)
