"""What a test needs of its guest kernel, decided before a guest boots.

    @pytest.mark.needs("CONFIG_RPS", Pktgen, version=(6, 10))

A need is a kernel option (built in, or a module this kernel's modules
include), a minimum version, a run-time feature (something no option
names, such as seed 002's sysctl, asked of a booted guest), or anything
carrying ``NEEDS`` (a driver of the harness, such as Pktgen, declares
what it needs once).  ``unmet()`` says which needs a kernel does not meet,
each with how to get it.
"""
from __future__ import annotations

import dataclasses

from ..util import Unavailable

HARNESS_FRAGMENT = "images/kconfig/harness.config"


@dataclasses.dataclass(frozen=True)
class Option:
    name: str                   # CONFIG_X
    what: str                   # what it gives a test
    module: str | None = None   # the module that provides it when it is =m
    probe: str | None = None    # a shell test that is true in a guest that has it


# The options the suite and the harness's drivers use.  An option missing
# here still works as a need (built in, or =m with modules present).
OPTIONS = {o.name: o for o in (
    Option("CONFIG_NET_PKTGEN", "pktgen, the in-kernel packet generator", "pktgen", "modprobe -nq pktgen"),
    Option("CONFIG_VETH", "veth pairs", "veth", "modprobe -nq veth"),
    Option("CONFIG_TUN", "tun/tap devices", "tun", "modprobe -nq tun"),
    Option("CONFIG_VHOST_NET", "vhost-net", "vhost_net", "modprobe -nq vhost_net"),
    Option("CONFIG_BRIDGE", "bridges", "bridge", "modprobe -nq bridge"),
    Option("CONFIG_NET_NS", "network namespaces", None, "test -e /proc/self/ns/net"),
    Option("CONFIG_RPS", "RPS (rps_cpus)", None, "test -e /sys/class/net/lo/queues/rx-0/rps_cpus"),
    Option("CONFIG_XPS", "XPS (xps_cpus)", None, "test -e /sys/class/net/lo/queues/tx-0/xps_cpus"),
    Option("CONFIG_HOTPLUG_CPU", "CPU hotplug", None, "test -e /sys/devices/system/cpu/cpu1/online"),
    Option("CONFIG_NET_SCHED", "traffic control (tc qdiscs)", None, "test -e /proc/net/psched"),
    Option("CONFIG_NET_SCH_FQ_CODEL", "the fq_codel qdisc", "sch_fq_codel", "modprobe -nq sch_fq_codel"),
    Option("CONFIG_NET_SCH_MQPRIO", "the mqprio qdisc", "sch_mqprio", "modprobe -nq sch_mqprio"),
    Option("CONFIG_NET_SCH_NETEM", "the netem qdisc", "sch_netem", "modprobe -nq sch_netem"),
    Option("CONFIG_NET_SCH_TBF", "the tbf qdisc", "sch_tbf", "modprobe -nq sch_tbf"),
    Option("CONFIG_NET_SCH_FQ", "the fq qdisc", "sch_fq", "modprobe -nq sch_fq"),
    Option("CONFIG_NET_SCH_INGRESS", "the ingress qdisc", "sch_ingress", "modprobe -nq sch_ingress"),
)}
QDISC_OPTIONS = {"fq_codel": "CONFIG_NET_SCH_FQ_CODEL", "mqprio": "CONFIG_NET_SCH_MQPRIO",
                 "netem": "CONFIG_NET_SCH_NETEM", "tbf": "CONFIG_NET_SCH_TBF", "fq": "CONFIG_NET_SCH_FQ",
                 "ingress": "CONFIG_NET_SCH_INGRESS", "clsact": "CONFIG_NET_SCH_INGRESS"}


@dataclasses.dataclass(frozen=True)
class Feature:
    """A need no config option names, asked of a booted guest (once per guest)."""
    name: str
    probe: str                  # a shell test, true where the feature is there
    hint: str                   # how to get it


@dataclasses.dataclass(frozen=True)
class Version:
    minimum: tuple[int, int]
    why: str = ""


class MissingKernelFeature(Unavailable):
    """A kernel lacks what a test or a lab needs; the pytest plugin turns it
    into a skip with this message (never a failure)."""


def option(name: str) -> Option:
    name = name if name.startswith("CONFIG_") else "CONFIG_" + name
    return OPTIONS.get(name) or Option(name, name)


def expand(*needs) -> list:  # of Option, Feature and Version
    """Options, Versions and Features from option names, objects with NEEDS
    (drivers, topologies), and the three themselves, without duplicates."""
    out: list = []
    for need in needs:
        found: list
        if isinstance(need, str):
            found = [option(need)]
        elif isinstance(need, (Option, Feature, Version)):
            found = [need]
        elif hasattr(need, "NEEDS"):
            found = expand(*need.NEEDS)
        elif isinstance(need, (list, tuple)):
            found = expand(*need)
        else:
            raise TypeError(f"needs: {need!r} is not an option name, a Version, a Feature "
                            "or something with NEEDS")
        out += [f for f in found if f not in out]
    return out


def how_to_get(opt: Option) -> str:
    return (f"add {opt.name}=y to the kernel's config, or build it with tools/build-kernel "
            f"(it merges {HARNESS_FRAGMENT})")


def unmet(kernel, needs, ask=None) -> list[str]:
    """Why ``kernel`` cannot run a test with these needs ([] when it can).

    ``kernel.provides(option)`` says True, False or None (unknown: the
    kernel came without a config); unknown options and Features are asked
    of a booted guest through ``ask(probe) -> bool`` when one is given,
    and are otherwise left for run time (not reported here)."""
    reasons = []
    for need in expand(*needs):
        if isinstance(need, Version):
            if kernel.version < need.minimum:
                reasons.append(f"needs Linux >= {'.'.join(map(str, need.minimum))}"
                               f"{' (' + need.why + ')' if need.why else ''}; this kernel is {kernel.release}")
        elif isinstance(need, Feature):
            if ask is not None and not ask(need.probe):
                reasons.append(f"needs {need.name}; {need.hint}")
        else:
            have = kernel.provides(need.name)
            if have is None and ask is not None and need.probe:
                have = ask(need.probe)
            if have is False:
                reasons.append(f"needs {need.name} ({need.what}): {kernel.lacks(need.name, need.module)}; "
                               f"{how_to_get(need)}")
    return reasons


def fragment(options) -> str:
    """The smallest config fragment that adds ``options``."""
    names = sorted({o.name if isinstance(o, Option) else option(o).name for o in options})
    return "".join(f"{n}=y\n" for n in names)
