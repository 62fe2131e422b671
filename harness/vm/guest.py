"""One libvirt guest: start, run/check, pause/resume, stop; console and splats.

A guest is a transient libvirt domain (qemu:///system) booted straight into
the harness initramfs, with the host's root shared read-only over virtio-9p.
Its name carries the owner's pid so that a later run can reap what a killed
run left behind.
"""
from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any
from pathlib import Path

from ..endpoint import Endpoint
from .contracts import Hypervisor
from .console import AgentChannel, ConsoleLog, GuestError, Job, connect_unix, split_dump
from .images import build_initramfs, domain_xml
from ..kernel.kernel import Kernel
from .splat import Splat
from .budget import Budget, Holding
from ..util import GUEST_MEMORY_MB, GUEST_VCPUS, REPO, RUN_ROOT, HarnessError, pid_alive, run_dir, teardown_section

log = logging.getLogger(__name__)

DOMAIN_PREFIX = "harness"
_DOMAIN_RE = re.compile(rf"^{DOMAIN_PREFIX}-(\d+)-")
_marks = itertools.count(1)
QEMU_LOGS = Path("/var/log/libvirt/qemu")
_libvirt_conn = None


class BootWedged(GuestError):
    """A boot that will not finish: under TCG, an RCU stall before the agent came up."""

    def __init__(self, message: str, log_path: Path):
        super().__init__(message)
        self.log_path = log_path


def libvirt_conn() -> Any:
    """The process's connection to the system libvirtd."""
    global _libvirt_conn
    import libvirt
    if _libvirt_conn is None or not _libvirt_conn.isAlive():
        libvirt.registerErrorHandler(lambda *_: None, None)  # errors come as exceptions
        try:
            _libvirt_conn = libvirt.open("qemu:///system")
        except libvirt.libvirtError as e:
            raise HarnessError(f"cannot connect to libvirtd at qemu:///system ({e}); "
                               "is libvirtd running? tools/setup starts it") from None
        atexit.register(_close_conn)
    return _libvirt_conn


def _close_conn():
    """Close before interpreter teardown (libvirt's __del__ fails after it)."""
    global _libvirt_conn
    if _libvirt_conn is not None:
        try:
            _libvirt_conn.close()
        except Exception:
            pass
        _libvirt_conn = None


def reap_stale_guests() -> list[str]:
    """Destroy domains and run dirs whose owning process is gone."""
    import libvirt
    conn = libvirt_conn()
    reaped = []
    for dom in conn.listAllDomains():
        m = _DOMAIN_RE.match(dom.name())
        if m and not pid_alive(int(m.group(1))):
            try:
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
            except libvirt.libvirtError:
                pass
            reaped.append(dom.name())
    if RUN_ROOT.is_dir():
        for d in RUN_ROOT.iterdir():
            m = _DOMAIN_RE.match(d.name)
            if m and not pid_alive(int(m.group(1))):
                shutil.rmtree(d, ignore_errors=True)
    # libvirt keeps a log per domain name: those of dead owners go too
    for qemu_log in QEMU_LOGS.glob(f"{DOMAIN_PREFIX}-*.log"):
        m = _DOMAIN_RE.match(qemu_log.name)
        if m and not pid_alive(int(m.group(1))):
            qemu_log.unlink(missing_ok=True)
    return reaped


class Domain:
    """A running libvirt domain on this machine."""

    def __init__(self, dom):
        self._dom = dom

    def resume(self) -> None:
        import libvirt
        if self._dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            self._dom.resume()

    def suspend(self) -> None:
        import libvirt
        if self._dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
            self._dom.suspend()

    def destroy(self) -> None:
        import libvirt
        try:
            self._dom.destroy()
        except libvirt.libvirtError:
            pass  # already gone
        (QEMU_LOGS / f"{self._dom.name()}.log").unlink(missing_ok=True)  # the console log is ours

    def vhost_fds(self) -> int:
        """How many /dev/vhost-net descriptors its QEMU holds (one per
        queue pair on vhost-net)."""
        return vhost_fds(int(Path(f"/run/libvirt/qemu/{self._dom.name()}.pid").read_text()))

    def pin_vcpus(self, vcpus: int, host_cpus: list[int]) -> None:
        total = os.cpu_count() or 1
        for i in range(vcpus):
            self._dom.pinVcpu(i, tuple(c == host_cpus[i % len(host_cpus)] for c in range(total)))

    def __getattr__(self, name):  # the rest of virDomain (state, info, ...)
        return getattr(self._dom, name)


def vhost_fds(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd) == "/dev/vhost-net"
        except OSError:
            pass  # closed meanwhile
    return count


class LocalHypervisor:
    """Guests on this machine: its libvirtd, its sockets, its run directory.
    A lab guest that hosts a nested lab gives the same four calls
    (harness.lab.nest.GuestHost)."""

    name = "host"

    def run_dir(self, domain_name: str) -> Path:
        return run_dir(domain_name)

    def remove_dir(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def create(self, xml: str) -> Domain:
        """The domain, started paused."""
        import libvirt
        try:
            return Domain(libvirt_conn().createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED))
        except libvirt.libvirtError as e:
            raise HarnessError(f"libvirt could not start the guest: {e}") from None

    def connect(self, path: Path) -> socket.socket:
        return connect_unix(path)


LOCAL: Hypervisor = LocalHypervisor()


def host_tsc_khz() -> int | None:
    """The host's TSC rate, which a TCG guest's TSC runs at (QEMU reads the
    host's): bogomips / 2 on x86, derived from the TSC where the host
    clocks by it; None when the host does not (its TSC is not to be
    trusted, so neither is the guest's)."""
    try:
        source = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource").read_text().strip()
        bogomips = next(float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("bogomips"))
    except (OSError, StopIteration, ValueError):
        return None
    return int(bogomips * 500) if source == "tsc" else None


def timing_args(kernel: Kernel, accel: str) -> list[str]:
    """What spares a TCG guest its clock calibrations: lpj= (each vCPU's
    delay loop, ~0.7 s), the TSC's rate (its PIT calibration fails under
    two levels of emulation) and trust in it (its synchronisation check
    sees TCG's vCPU threads as warps and falls back to jiffies or HPET,
    whose every read is an emulated device access: a nested QEMU reads
    the clock all the time)."""
    khz = host_tsc_khz()
    if khz is None or accel != "tcg":
        return []
    try:
        hz = int(kernel.config.get("CONFIG_HZ", "250"))
    except ValueError:
        hz = 250
    return [f"lpj={khz * 1000 // hz}", f"tsc_early_khz={khz}", "tsc=reliable"]


def local_timer_ticks(interrupts: str) -> list[int]:
    """Per-CPU counts of /proc/interrupts' LOC line (local timer
    interrupts), one per CPU column of its header."""
    lines = interrupts.splitlines()
    ncpu = len(lines[0].split()) if lines else 0
    for line in lines[1:]:
        name, _, rest = line.partition(":")
        if name.strip() == "LOC":
            counts = rest.split()[:ncpu]
            if len(counts) == ncpu and all(c.isdigit() for c in counts):
                return [int(c) for c in counts]
            break
    raise GuestError(f"/proc/interrupts: expected a 'LOC: <{ncpu} counts>' line, got {interrupts[:200]!r}")


def kernel_cmdline(*, name: str, accel: str, timing: Sequence[str] = (), modules: str = "", venv: str = "",
                   keep: Sequence[str] = (), extra: str = "") -> list[str]:
    """A guest's kernel command line, one argument per item (joined once,
    by the caller): the console, quiet panics, what stage 1 needs
    (harness.*: the guest's name, its modules, the host venv and the host
    paths tmpfs must not hide), and the caller's own arguments last."""
    args = ["console=ttyS0,115200", "loglevel=5", "panic=-1", "mitigations=off", *timing]
    if accel == "tcg":
        # an idle vCPU whose one-shot timer wakeup is lost never wakes again
        # under TCG (seen as an RCU stall with the vCPU halted); a periodic
        # tick makes that rarer, and makes every CPU's tick count move, which
        # is how a boot that lost one anyway is told (_check_every_cpu_ticks)
        args.append("nohz=off")
    for path in filter(None, keep):  # stage 1 splits the list at commas, the kernel its command line at blanks
        if re.search(r"[\s,]", path) or not path.startswith("/"):
            raise HarnessError(f"{path!r}: a host path a guest sees must be absolute, with no comma or blank")
    args += [f"harness.name={name}", f"harness.modules={modules}", f"harness.venv={venv}",
             "harness.keep=" + ",".join(dict.fromkeys(p for p in keep if p))]
    return args + extra.split()


class Guest(Endpoint):
    """A running guest.  Use as a context manager or call start()/stop()."""

    def __init__(self, name: str, kernel: Kernel, *, vcpus: int = GUEST_VCPUS, memory_mb: int = GUEST_MEMORY_MB,
                 cmdline: str = "", accel: str = "tcg", log_dir: Path | None = None,
                 interfaces: Sequence[str] = (), qemu_args: Sequence[str] = (), shares: Sequence[Path] = (),
                 boot_timeout: float = 120.0,
                 hypervisor: Hypervisor | None = None, speed_scale: float = 1.0):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}", name):
            raise HarnessError(f"guest name {name!r}: expected 1-32 letters, digits, '_', '.', '-'")
        self.name = name
        self.kernel = kernel
        self.vcpus = vcpus
        self.memory_mb = max(memory_mb, kernel.min_memory_mb)
        self.extra_cmdline = cmdline
        self.accel = accel
        self.interfaces = list(interfaces)
        self.qemu_args = list(qemu_args)
        # host paths the guest reads even where its own tmpfs goes (/tmp, /run, /var/...)
        self.shares = [str(Path(p).resolve()) for p in shares]
        for share in self.shares:
            if not Path(share).is_dir():
                raise HarnessError(f"guest {name}: shared path {share}: expected an existing directory")
        self.boot_timeout = boot_timeout
        # how many times slower than a plain guest on the machine the limits
        # were set on (a nested guest: measured by its host, harness.lab.nest)
        self.speed_scale = speed_scale
        # where the domain runs: this machine's libvirtd, or a lab guest
        # hosting a nested lab (harness.lab.nest)
        self.hypervisor: Hypervisor = hypervisor or LOCAL
        self.domain_name = f"{DOMAIN_PREFIX}-{os.getpid()}-{name}"
        self.log_dir = Path(log_dir) if log_dir else None
        self.console: Any = None  # ConsoleLog once started
        self.agent: AgentChannel | None = None
        self.release: str | None = None
        self.boot_seconds: float | None = None
        self.mark_line = 0  # console line of the last mark (per-test slicing)
        self._dom: Any = None  # the Domain while it exists
        self._dir: Path | None = None
        self._local_dir: Path | None = None
        self._owner = os.getpid()
        self._asked: dict[str, bool] = {}
        # stop() and a boot in another thread (a lab boots its guests in
        # threads): once stopped, no domain is created, and one being
        # created is destroyed as soon as it exists
        self._life = threading.Lock()
        self._stopped = False
        self._holding: Holding | None = None

    # -- lifecycle ------------------------------------------------------------
    @property
    def cmdline(self) -> str:
        modules = str(self.kernel.modules_dir or "")
        venv = sys.prefix if sys.prefix != sys.base_prefix else ""
        return " ".join(kernel_cmdline(name=self.name, accel=self.accel, timing=timing_args(self.kernel, self.accel),
                                       modules=modules,
                                       venv=venv, keep=[str(REPO), venv, modules, *self.shares],
                                       extra=self.extra_cmdline))

    def start(self) -> Guest:
        t0 = time.monotonic()
        if self.hypervisor is LOCAL:
            # its share of the host's vCPUs and memory, waited for while
            # other runs' or workers' guests hold it (harness.vm.budget)
            self._holding = Budget().request(self.vcpus, self.memory_mb, self.domain_name)
        holding = self._holding
        try:
            if holding is not None:
                holding.wait()  # stop() from another thread withdraws it
                t0 += holding.waited_s
            self._boot_once_more_if_wedged()
        except BaseException:
            self._release_budget()
            raise
        self.boot_seconds = time.monotonic() - t0
        return self

    def _boot_once_more_if_wedged(self) -> None:
        try:
            self._boot()
        except BootWedged as e:
            # TCG loses a timer interrupt of a halted vCPU now and then (seen
            # about once in 150 boots, a CI run's worth: CPU 0 idle at 2-3 s,
            # never ticking again, an RCU stall report at 21-23 s, before or
            # after the agent's hello); that boot is lost, the next one is not
            log.warning("%s: %s; booting it once more", self.name, e)
            with contextlib.suppress(OSError), open(e.log_path, "a") as f:
                f.write(f"--- harness: {e}; booting it once more ---\n")
            self._boot()

    def _release_budget(self) -> None:
        if self._holding is not None:
            self._holding.release()
            self._holding = None

    def _boot(self):
        initrd = build_initramfs(self.kernel)
        self._dir = self.hypervisor.run_dir(self.domain_name)
        if self.log_dir is None and self.hypervisor is not LOCAL:
            self._local_dir = run_dir(self.domain_name)  # the console log stays on this machine
        log_dir = self.log_dir or self._local_dir or self._dir
        log_dir.mkdir(parents=True, exist_ok=True)
        console_sock, agent_sock = self._dir / "console.sock", self._dir / "agent.sock"
        xml = domain_xml(name=self.domain_name, kernel=self.kernel, initrd=initrd,
                         cmdline=self.cmdline, vcpus=self.vcpus, memory_mb=self.memory_mb,
                         accel=self.accel, console_sock=console_sock, agent_sock=agent_sock,
                         interfaces=self.interfaces, qemu_args=self.qemu_args)
        t0 = time.monotonic()
        try:
            # a signal while libvirt creates the domain waits until it is ours to destroy
            with teardown_section(), self._life:
                if self._stopped:
                    raise GuestError(f"{self.name}: stopped before it booted")
                # Paused first: both channels are connected before the first byte.
                self._dom = self.hypervisor.create(xml)
        except BaseException as e:
            self._teardown()
            if isinstance(e, HarnessError) and not isinstance(e, GuestError):
                raise GuestError(f"{self.name}: {e}") from None
            raise
        try:
            self.console = ConsoleLog(self.hypervisor.connect(console_sock),
                                      log_dir / f"{self.name}.console.log",
                                      on_panic=self._on_panic)
            self.agent = AgentChannel(self.hypervisor.connect(agent_sock), self.name, self.console)
            self.agent.time_scale = self.time_scale
            self.agent.spill_dir = log_dir
            created = time.monotonic()
            self._dom.resume()
            self.release = self._wait_ready(log_dir / f"{self.name}.console.log")
            if self.accel == "tcg" and self.vcpus > 1:
                self._check_every_cpu_ticks(log_dir / f"{self.name}.console.log")
            log.info("%s: domain created in %.1fs, up %.1fs later", self.name, created - t0,
                     time.monotonic() - created)
        except BaseException:
            self._teardown()
            raise

    def _wait_ready(self, log_path: Path) -> str:
        """The agent's hello; BootWedged as soon as a TCG boot shows an RCU
        stall (a vCPU that will never wake), instead of at the timeout."""
        assert self.agent is not None
        t0 = time.monotonic()
        deadline = t0 + self.boot_timeout * self.time_scale
        while True:
            try:
                return self.agent.wait_ready(max(0.0, min(1.0, deadline - time.monotonic())),
                                             waited=time.monotonic() - t0)
            except GuestError:
                if self.agent.dead or time.monotonic() >= deadline:
                    raise
                stalls = [s for s in self.console.splats_between(0) if s.kind == "rcu_stall"]
                if stalls and self.accel == "tcg":
                    raise BootWedged(f"the boot stalled ({stalls[0].title})", log_path) from None

    def _check_every_cpu_ticks(self, log_path: Path, tries: int = 20):
        """BootWedged unless every vCPU's local timer advances: a vCPU that
        lost its timer while halted early in the boot (TCG) lets the boot
        finish on the others, but never runs its timers or its per-CPU
        kthreads again (seen: CPU 0 idle from 2 s, its RCU stall report at
        23 s, in the middle of a test).  With nohz=off an idle CPU ticks
        too, so a count that does not move in a few guest ticks is lost.
        Read without a fork (the agent's file dump)."""
        try:
            first = now = self._local_timer_ticks()
            for _ in range(tries):
                time.sleep(0.05)
                now = self._local_timer_ticks()
                if all(b > a for a, b in zip(first, now, strict=False)):
                    return
        except GuestError as e:  # a wedged CPU can hold the read itself
            raise BootWedged(f"reading its vCPUs' timer ticks failed: {e}", log_path) from None
        stuck = [cpu for cpu, (a, b) in enumerate(zip(first, now, strict=False)) if b <= a]
        raise BootWedged(f"the boot left CPU {','.join(map(str, stuck))} without timer ticks "
                         f"(LOC {first} then {now})", log_path)

    def _local_timer_ticks(self) -> list[int]:
        result = self.dump(["/proc/interrupts"]).wait(30)
        files = split_dump(result.stdout)
        if result.rc != 0 or "/proc/interrupts" not in files:
            raise GuestError(f"{self.name}: reading /proc/interrupts failed: {result.stderr[-300:]}")
        return local_timer_ticks(files["/proc/interrupts"])

    def _on_panic(self, splat: Splat):
        if self.agent is not None:
            self.agent.fail(f"kernel panic: {splat.title}")

    @property
    def time_scale(self) -> float:
        """Timeouts and time limits on this guest (its boot's too) are
        multiplied by it: a slow debug kernel, a slow level of emulation."""
        return self.kernel.time_scale * self.speed_scale

    def loop_seconds(self) -> float:
        """Seconds this guest takes for a fixed CPU-bound shell loop, timed
        by its own clock: how fast it runs code (a TCG guest on a slow
        host, a nested guest...), to scale what is expected of it."""
        out = self.check("read a _ < /proc/uptime; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; "
                         "read b _ < /proc/uptime; echo $a $b", timeout=600).stdout.split()
        return max(0.01, float(out[1]) - float(out[0]))

    @property
    def alive(self) -> bool:
        return self.agent is not None and self.agent.dead is None

    def healthy(self, timeout: float = 10.0) -> bool:
        """Whether the guest still answers a command that takes rtnl (a
        kernel stuck in an unregister, say, holds it for good)."""
        if not self.alive:
            return False
        try:
            return self.run("ip link show dev lo >/dev/null", timeout=timeout).rc == 0
        except GuestError:
            return False

    def retire(self, reason: str) -> None:
        """Stop a guest that can no longer serve tests; jobs still waiting
        on it end with ``reason``."""
        if self.agent is not None:
            self.agent.fail(reason)
        self.stop()

    def stop(self) -> None:
        """Destroy the domain and remove its files; safe to call twice."""
        if os.getpid() != self._owner:
            return  # a forked copy of the owner (e.g. a pyroute2 helper) exiting
        with teardown_section():
            with self._life:
                self._stopped = True
            try:
                self._teardown()
            finally:
                self._release_budget()

    def _teardown(self):
        """The domain destroyed, the channels closed, the files removed."""
        with self._life:
            dom, self._dom = self._dom, None
        if dom is not None:
            dom.destroy()  # quiet when already gone (panic, poweroff)
        for channel in (self.agent, self.console):
            if channel is not None:
                channel.close()
        if self.agent is not None:
            self.agent.fail("the guest was stopped")
        self._cleanup_dir()

    def _cleanup_dir(self):
        if self._dir is not None:
            self.hypervisor.remove_dir(self._dir)
            self._dir = None
        if self._local_dir is not None:
            shutil.rmtree(self._local_dir, ignore_errors=True)
            self._local_dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- commands -----------------------------------------------------------
    def spawn(self, command: str, on_output=None) -> Job:
        """Start ``command`` (sh -c) in the guest; returns at once.
        ``on_output(kind, data)`` ("O" or "E") streams its output."""
        if self.agent is None:
            raise GuestError(f"{self.name}: not started")
        return self.agent.start(command, on_output=on_output)

    def spawn_tty(self, command: str = "", *, rows: int = 24, cols: int = 80, term: str = "xterm",
                  on_output=None) -> Job:
        """``command``, or an interactive shell, on a pseudo-terminal (harness shell)."""
        if self.agent is None:
            raise GuestError(f"{self.name}: not started")
        return self.agent.start_tty(command, rows=rows, cols=cols, term=term, on_output=on_output)

    def dump(self, patterns: list[str], netns: str = "") -> Job:
        """Start reading the files matching glob ``patterns`` (in network
        namespace ``netns``) without starting a program; see read_files()."""
        if self.agent is None:
            raise GuestError(f"{self.name}: not started")
        return self.agent.start("\n".join([netns, *patterns]), kind=b"D")

    def ask(self, probe: str) -> bool:
        """Whether a shell test holds in this guest, asked once per guest
        (what a kernel without a config has, run-time features)."""
        if probe not in self._asked:
            self._asked[probe] = self.run(probe, timeout=30).rc == 0
        return self._asked[probe]

    # -- libvirt controls -----------------------------------------------------
    def pause(self) -> None:
        """Stop the vCPUs (libvirt suspend): the guest consumes nothing, and
        QEMU stops reading its taps."""
        self._dom.suspend()

    def resume(self) -> None:
        self._dom.resume()

    def pin_vcpus(self, host_cpus: list[int]) -> None:
        """vCPU i runs on host CPU host_cpus[i % len(host_cpus)]."""
        self._dom.pin_vcpus(self.vcpus, host_cpus)

    @property
    def domain(self) -> Any:
        return self._dom

    # -- console --------------------------------------------------------------
    def mark(self, timeout: float = 10.0) -> int:
        """Print a marker through the guest kernel and wait for it on the
        console: every line before the returned index was printed before now."""
        tag = f"harness-mark-{os.getpid()}-{next(_marks)}"
        self.check(f"echo '<2>{tag}' > /dev/kmsg")
        self.mark_line = self.console.wait_for_line(tag, self.mark_line, timeout)
        return self.mark_line

    def splats(self, start: int = 0, end: int | None = None) -> list[Splat]:
        return self.console.splats_between(start, end)

    def __repr__(self):
        return f"<Guest {self.name} {self.release or 'not started'} {self.accel}>"
