"""A lab guest as the host of a nested lab.

    host = GuestHost(outer_guest, log_dir=logs)
    host.start(accel="auto", kernels=[...])   # libvirtd in the guest, the nest server, the accelerator
    inner = Lab(topology.guest("outer").nested, kernel=k, host=host).up()

The guest runs libvirtd, virtlogd and QEMU from the host's root (it sees
it read-only over 9p, with tmpfs where they write) and the nest server
(harness.lab.nestd), which applies the nested lab's plan with hostnet and
starts its domains with the guest's libvirtd: the same code as on the real
host.  Everything else stays here: the nested guests' initramfs and domain
XML are made on this machine (the guest sees the same paths), and each of
their sockets (console, command port) is relayed by a ``socat`` stream
through the outer guest's agent into a socket pair here, so a nested
guest is an ordinary harness.vm.guest.Guest: the same exact command
channel, the same console log and splat scanner, on this machine.
"""
from __future__ import annotations

import json
import logging
import shlex
import socket
import threading
import time
from pathlib import Path

from ..endpoint import Endpoint
from ..util import RUN_ROOT, HarnessError, Unavailable
from ..vm.console import Job
from ..vm.guest import Guest
from ..vm.images import build_initramfs
from ..kernel.kernel import Kernel
from .hosts import Container, Plumbing

log = logging.getLogger(__name__)

# libvirt's daemons, started as on a host without systemd (tools/setup);
# their state directories are the guest's tmpfs
START_LIBVIRT = """\
mkdir -p /run/libvirt /var/lib/libvirt/qemu /var/cache/libvirt /var/log/libvirt /run/harness/libvirt
# QEMU without a private /dev, so that it can open /dev/net/tun and
# /dev/vhost-net itself: under TCG libvirt gives vhost-net to no domain,
# and the harness hands QEMU its vhost NICs as arguments (render.nic_args).
# The harness's own qemu.conf, bound over the host's in the guest only.
printf '%s\\n' 'namespaces = []' \\
  'cgroup_device_acl = ["/dev/null", "/dev/full", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/ptmx",' \\
  '  "/dev/kvm", "/dev/userfaultfd", "/dev/net/tun", "/dev/vhost-net"]' > /run/harness/libvirt/qemu.conf
grep -q ' /etc/libvirt/qemu.conf ' /proc/mounts || mount --bind /run/harness/libvirt/qemu.conf /etc/libvirt/qemu.conf
pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d
i=0; while [ $i -lt 600 ]; do virsh -c qemu:///system version >/dev/null 2>&1 && exit 0; i=$((i+1)); sleep 0.1; done
echo "libvirtd did not answer on qemu:///system" >&2; exit 1
"""
NEST_CACHE = "/run/harness/nest-cache"  # the server's own cache (the host's is read-only here)


MAX_REPLY = 16 << 20  # bytes of one reply line (a plan, a directory listing)

# How fast a nested guest runs follows from how fast its host guest runs
# code (Guest.loop_seconds): TCG inside TCG costs the outer guest's
# slowdown once more, so a nested guest's times grow with the square of
# that loop's.  Measured here (TCG in TCG, 2 host cores): the loop in
# 0.96 s in the outer guest, a minimal-kernel nested guest up in 144 s.
REF_LOOP_S = 0.5            # the loop in an outer guest where the limits of the nested tests were set
NESTED_BOOT_PER_LOOP2 = 160.0  # s of a nested boot per (outer loop s)^2, minimal kernel
NESTED_BOOT_BUDGET_S = 900.0   # a host slower than this predicts is too slow for nested labs: a named skip


class HostTooSlow(Unavailable):
    """The host runs nested guests too slowly for what a test needs."""


class NestError(HarnessError):
    pass


def parse_reply(line: bytes) -> dict | None:
    """One line of the nest server's stdout as a reply ({"id": N, ...}),
    or None when it is anything else."""
    try:
        reply = json.loads(line)
    except ValueError:  # also UnicodeDecodeError
        return None
    if not isinstance(reply, dict) or type(reply.get("id")) is not int:
        return None
    return reply


class GuestHost:
    """The host side of a nested lab, inside ``guest``."""

    def __init__(self, guest: Guest, *, log_dir: Path | None = None):
        self.guest = guest
        self.name = f"guest {guest.name}"
        self.log_dir = log_dir
        self.accel = "tcg"
        self.speed_scale = 1.0       # of its nested guests' time limits (measured in start())
        self.predicted_boot_s = 0.0  # what a nested guest's boot should take here
        self.loop_s = 0.0            # the speed loop's time in this guest (0: not measured, KVM)
        self.has_vhost_net = False
        self.release = ""
        self.hypervisor = self  # its domains run in the guest
        self._server: Job | None = None
        self._replies: dict[int, dict] = {}
        self._cond = threading.Condition()
        self._buffer = b""
        self._stderr: list[str] = []
        self._ids = iter(range(1, 1 << 62))
        self._plumbed = False

    # -- lifecycle ----------------------------------------------------------------
    def start(self, *, accel: str, kernels: list[Kernel]) -> None:
        """libvirtd up in the guest, the nest server started; the nested
        guests' accelerator chosen there (KVM only when a probe boots)."""
        if self.guest.accel == "kvm":
            # nested KVM: /dev/kvm is only there once the vendor module is
            # loaded.  Not under TCG: its CPU model shows svm, which TCG
            # emulates, and libvirt then probes QEMU under that (minutes)
            self.guest.run("grep -qw vmx /proc/cpuinfo && modprobe -q kvm_intel; "
                           "grep -qw svm /proc/cpuinfo && modprobe -q kvm_amd", timeout=60)
        self._measure_speed()
        t0 = time.monotonic()
        self.guest.check(START_LIBVIRT, timeout=180)
        log.info("%s: libvirtd up in %.1fs", self.guest.name, time.monotonic() - t0)
        agent = self.guest.agent
        assert agent is not None
        self._server = agent.start_stream(
            f"cd / && HARNESS_CACHE={NEST_CACHE} exec python3 -m harness.lab.nestd", self._on_output)
        # KVM for the nested guests only where a probe guest boots with it in
        # there (nested VMX/SVM, host-passthrough CPU); TCG otherwise
        kernel = kernels[0] if kernels else self.guest.kernel
        hello = self.call("hello", accel="tcg" if accel == "tcg" and self.guest.accel == "tcg" else "auto",
                          kernel=str(kernel.image), initrd=str(build_initramfs(kernel)), timeout=180)
        self.accel, self.has_vhost_net, self.release = hello["accel"], hello["vhost_net"], hello["release"]
        log.info("%s hosts a nested lab: accel %s, vhost-net %s", self.guest.name, self.accel,
                 "yes" if self.has_vhost_net else "no")

    def _measure_speed(self):
        """How slow this guest's nested guests will be, from its own speed,
        before anything is started: their time limits scale with it, and
        a host too slow for them is a named skip, not a timeout."""
        if self.guest.accel == "kvm":
            return  # nested guests under KVM run near the outer guest's speed
        self.loop_s = loop = self.guest.loop_seconds()
        self.predicted_boot_s = NESTED_BOOT_PER_LOOP2 * loop ** 2
        self.speed_scale = max(1.0, (loop / REF_LOOP_S) ** 2)
        log.info("%s: speed loop %.2fs: nested guests' limits x%.1f, a nested boot ~%.0fs", self.guest.name,
                 loop, self.speed_scale, self.predicted_boot_s)
        if self.predicted_boot_s > NESTED_BOOT_BUDGET_S:
            raise HostTooSlow(f"needs a host fast enough for nested guests under TCG: guest {self.guest.name} ran "
                              f"its speed loop in {loop:.2f}s, which predicts a nested boot of "
                              f"{self.predicted_boot_s:.0f}s (over {NESTED_BOOT_BUDGET_S:.0f}s)")

    def teardown(self) -> None:
        """Everything the server made is removed, and the server ends."""
        if self._server is None:
            return
        server, self._server = self._server, None
        if self.guest.alive and server.running:
            try:
                self._call(server, "teardown", timeout=120)
            except HarnessError as e:
                log.warning("%s: nested teardown: %s", self.guest.name, e)
            assert self.guest.agent is not None
            self.guest.agent.close_input(server)
            server.done.wait(30 * self.guest.time_scale)

    # -- the lab's host calls ----------------------------------------------------
    def vhost_missing(self, accel: str) -> str | None:
        if not self.has_vhost_net:
            return f"guest {self.guest.name}'s kernel has no vhost-net (CONFIG_VHOST_NET)"
        return None  # under TCG too: its libvirtd lets QEMU open vhost-net itself

    def plumb(self, plan: list[dict]) -> Plumbing:
        made = self.call("plumb", plan=plan)
        return Plumbing(made["lab_id"], made["links"], made["namespaces"])

    def namespace(self, netns: str, short: str) -> Endpoint:
        ns = Container(self.guest, netns)
        ns.name = f"{self.guest.name}/host/{short}"
        return ns

    # -- the hypervisor calls (vm.guest.Guest) ------------------------------------
    def run_dir(self, domain_name: str) -> Path:
        return Path(self.call("mkdir", name=domain_name)["path"])

    def remove_dir(self, path: Path) -> None:
        if self._server is not None and self.guest.alive:
            self.call("rmdir", path=str(path))

    def create(self, xml: str) -> NestedDomain:
        name = xml.split("<name>", 1)[1].split("</name>", 1)[0]
        self.call("create", name=name, xml=xml)
        return NestedDomain(self, name)

    def connect(self, path: Path) -> socket.socket:
        """A socket here whose other end is ``path`` in the guest."""
        if Path(path).parent.parent != RUN_ROOT:
            raise NestError(f"{path}: not a socket of a nested guest")
        return Relay(self.guest, Path(path)).ours

    # -- requests ------------------------------------------------------------------
    def call(self, op: str, timeout: float = 60.0, **args) -> dict:
        if self._server is None:
            raise NestError(f"{self.guest.name}: the nest server is not running")
        return self._call(self._server, op, timeout=timeout, **args)

    def _call(self, server: Job, op: str, timeout: float, **args) -> dict:
        rid = next(self._ids)
        agent = self.guest.agent
        assert agent is not None
        agent.send_input(server, (json.dumps({"id": rid, "op": op, **args}) + "\n").encode())
        timeout *= self.guest.time_scale
        with self._cond:
            if not self._cond.wait_for(lambda: rid in self._replies or not server.running, timeout):
                raise NestError(f"{self.guest.name}: nest server: no answer to {op} within {timeout:.0f}s\n"
                                + self._stderr_tail())
            reply = self._replies.pop(rid, None)
        if reply is None:
            raise NestError(f"{self.guest.name}: the nest server ended (rc {server.rc}, "
                            f"{server.error or 'no error'}) during {op}\n" + self._stderr_tail())
        if "error" in reply:
            raise NestError(f"{self.guest.name}: nest server: {op}: {reply['error']}")
        return reply

    def _on_output(self, kind: str, data: bytes):
        if kind == "E":
            text = data.decode(errors="replace")
            self._remember(text.splitlines())
            for text_line in text.splitlines():
                log.debug("%s: %s", self.guest.name, text_line)
            return
        with self._cond:
            self._buffer += data
            *lines, self._buffer = self._buffer.split(b"\n")
            if len(self._buffer) > MAX_REPLY:  # no reply is that long: stray bytes
                lines.append(self._buffer)
                self._buffer = b""
            for line in lines:
                reply = parse_reply(line)
                if reply is not None:
                    self._replies[reply["id"]] = reply
                elif line.strip():
                    # something in the guest printed on the server's stdout:
                    # not a reply, and not a reason to stop listening
                    shown = line[:200].decode(errors="replace")
                    log.warning("%s: nest server printed a line that is not a reply: %r", self.guest.name, shown)
                    self._remember([f"(stdout) {shown}"])
            self._cond.notify_all()

    def _remember(self, lines: list[str]):
        self._stderr += lines
        del self._stderr[:-40]

    def _stderr_tail(self) -> str:
        return "--- nest server stderr (tail) ---\n" + "\n".join(self._stderr[-20:])

    def __repr__(self):
        return f"<GuestHost {self.guest.name}>"


class NestedDomain:
    """A domain of the guest's libvirtd, as vm.guest.Guest drives one."""

    def __init__(self, host: GuestHost, name: str):
        self.host, self.name = host, name

    def resume(self) -> None:
        self.host.call("resume", name=self.name)

    def suspend(self) -> None:
        self.host.call("suspend", name=self.name)

    def destroy(self) -> None:
        if self.host._server is not None and self.host.guest.alive:
            try:
                self.host.call("destroy", name=self.name)
            except HarnessError as e:
                log.warning("%s: %s", self.name, e)

    def vhost_fds(self) -> int:
        return int(self.host.call("vhost_fds", name=self.name)["count"])

    def pin_vcpus(self, vcpus: int, host_cpus: list[int]) -> None:
        raise NestError(f"{self.name}: a nested guest's vCPUs are threads of the outer guest; pin those")


class Relay:
    """One socket in the guest, reached from here: a socket pair whose far
    end is pumped through an agent stream running socat in the guest."""

    def __init__(self, guest: Guest, path: Path):
        self.ours, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        agent = guest.agent
        assert agent is not None
        self._agent = agent
        # the socket exists once libvirt created the domain; socat retries while QEMU binds it
        self._job = agent.start_stream(
            f"exec socat -b 65536 STDIO UNIX-CONNECT:{shlex.quote(str(path))},retry=50,interval=0.1",
            self._to_ours)
        threading.Thread(target=self._to_guest, name=f"relay:{path.parent.name}/{path.name}",
                         daemon=True).start()
        threading.Thread(target=self._until_done, daemon=True).start()

    def _to_ours(self, kind: str, data: bytes):
        if kind == "O":
            try:
                self._theirs.sendall(data)
            except OSError:
                pass
        else:
            log.debug("relay: %s", data.decode(errors="replace").strip())

    def _to_guest(self):
        while True:
            try:
                data = self._theirs.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            self._agent.send_input(self._job, data)
        if self._job.running:
            self._agent.close_input(self._job)

    def _until_done(self):
        # not Job.wait(): a relay outlives any splat watch on its guest
        self._job.done.wait()
        try:
            self._theirs.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._theirs.close()
