"""Renderers are pure functions: their output for known inputs, as golden text."""
import pytest

from harness.util import HarnessError
from harness.vm.guest import kernel_cmdline


def test_kernel_cmdline_under_tcg_keeps_every_argument_apart():
    args = kernel_cmdline(name="g1-abcd", accel="tcg", timing=["lpj=10000000", "tsc=reliable"], modules="/m",
                          venv="/v", keep=["/repo", "/v", "/m", ""], extra="thread_backlog_napi  harness.test=x")
    assert args == ["console=ttyS0,115200", "loglevel=5", "panic=-1", "mitigations=off", "lpj=10000000",
                    "tsc=reliable", "nohz=off", "harness.name=g1-abcd", "harness.modules=/m", "harness.venv=/v",
                    "harness.keep=/repo,/v,/m", "thread_backlog_napi", "harness.test=x"]


def test_kernel_cmdline_under_kvm_has_no_periodic_tick_and_no_lpj_when_unknown():
    args = kernel_cmdline(name="g", accel="kvm")
    assert "nohz=off" not in args and not any(a.startswith("lpj=") for a in args)
    assert "harness.name=g" in args


def test_kernel_cmdline_names_a_shared_path_stage_1_would_split():
    for path in ("/tmp/a,b", "/tmp/a b", "logs/run"):
        with pytest.raises(HarnessError, match="must be absolute, with no comma or blank"):
            kernel_cmdline(name="g", accel="kvm", keep=[path])


# -- lab renderers -----------------------------------------------------------
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from harness.lab import model, render  # noqa: E402
from harness.vm.images import domain_xml  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


def golden(name: str, text: str):
    """Compare with golden/<name>; HARNESS_REGOLD=1 rewrites it (review the diff)."""
    import os
    path = GOLDEN / name
    if os.environ.get("HARNESS_REGOLD"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; if on purpose, HARNESS_REGOLD=1 and review the diff"


def test_guest_setup_script_of_proxy_hops():
    topo = model.load(TOPOLOGIES / "proxy-hops.yaml")
    g1 = topo.guest("g1")
    golden("proxy-hops.g1.setup.sh", render.guest_setup(g1, ["52:54:00:00:00:01"][:len(g1.nics)]) + "\n")


def test_guest_setup_script_of_single_mq():
    topo = model.load(TOPOLOGIES / "single-mq.yaml")
    g1 = topo.guest("g1")
    golden("single-mq.g1.setup.sh", render.guest_setup(g1, ["52:54:00:00:00:01"]) + "\n")


def test_nic_xml():
    golden("nic.xml", render.nic_xml(tap="nh1a2bt0", mac="52:54:1a:2b:00:00", queues=2, vhost=False, mtu=1500) + "\n")


def test_nic_xml_of_an_emulated_chip_has_no_queues_vhost_or_mtu():
    golden("nic-rtl8139.xml", render.nic_xml(tap="nh1a2bt0", mac="52:54:1a:2b:00:00", queues=1, vhost=False,
                                             mtu=1500, nic_model="rtl8139") + "\n")


def test_guest_setup_loads_8139cp_before_it_looks_for_the_nic():
    spec = model.Guest("g1", nics=(model.Nic("t0", model="rtl8139"),))
    script = render.guest_setup(spec, ["52:54:00:00:00:01"])
    assert script.index("modprobe -q 8139cp") < script.index("52:54:00:00:00:01")


def test_nginx_conf_server_and_proxy():
    golden("nginx.conf", render.nginx_conf("/run/harness/lab/server", 2, None)
           + render.nginx_conf("/run/harness/lab/proxy", 2, "10.77.2.2"))


def test_domain_xml():
    kernel = SimpleNamespace(boot_image=Path("/k/vmlinux"), pvh=False)
    golden("domain.xml", domain_xml(name="harness-1-g1", kernel=kernel, initrd=Path("/c/i.cpio"),
                                    cmdline="console=ttyS0 harness.name=g1", vcpus=2, memory_mb=512, accel="tcg",
                                    console_sock=Path("/run/x/console.sock"), agent_sock=Path("/run/x/agent.sock"),
                                    interfaces=[render.nic_xml(tap="t", mac="52:54:00:00:00:01", queues=1,
                                                               vhost=False, mtu=1500)]))


def test_host_plan_of_host_to_guest_proxy_and_nested_vhost():
    import json
    plans = {name: render.host_plan(model.load(TOPOLOGIES / f"{name}.yaml"))
             for name in ("host-to-guest-proxy", "single-mq")}
    plans["nested-vhost (inner)"] = render.host_plan(model.load(TOPOLOGIES / "nested-vhost.yaml").guest("host1").nested)
    golden("host-plans.json", json.dumps(plans, indent=1) + "\n")


def test_domain_xml_with_a_vhost_nic_under_tcg():
    """libvirt gives vhost-net to KVM domains only: under TCG the NIC goes to
    QEMU as arguments, vhost=on."""
    kernel = SimpleNamespace(boot_image=Path("/k/vmlinux"), pvh=False)
    golden("domain-tcg-vhost.xml", domain_xml(
        name="harness-1-n1", kernel=kernel, initrd=Path("/c/i.cpio"), cmdline="console=ttyS0", vcpus=1,
        memory_mb=384, accel="tcg", console_sock=Path("/run/x/console.sock"), agent_sock=Path("/run/x/agent.sock"),
        qemu_args=render.nic_args(tap="nh1a2bt0", mac="52:54:1a:2b:00:00", queues=2, mtu=1500, index=0)))


# -- no topology text ends a here-document ----------------------------------
import dataclasses  # noqa: E402

HOSTILE = "x\nEOF\nreboot -f"


def _guest_with(field: str) -> model.Guest:
    """proxy-hops' g1 with one field of a container link or route set to
    text that would end the setup script's here-documents."""
    g1 = model.load(TOPOLOGIES / "proxy-hops.yaml").guest("g1")
    c = g1.containers[0]
    if field.startswith("route."):
        routes = (model.Route(**{"to": "default", "via": "10.0.0.1", field[6:]: HOSTILE}),)
        c = dataclasses.replace(c, routes=routes)
    else:
        c = dataclasses.replace(c, links=(dataclasses.replace(c.links[0], **{field: HOSTILE}),) + c.links[1:])
    return dataclasses.replace(g1, containers=(c,) + g1.containers[1:])


@pytest.mark.parametrize("field", ["address", "name", "qdisc", "route.to", "route.via"])
def test_no_field_can_end_a_here_document_of_the_setup_script(field):
    """The model refuses such text (tests/unit/topologies/bad); the
    renderer refuses it too, rather than emit a script whose rest runs as
    shell in the guest."""
    with pytest.raises(ValueError, match="would end its here-document"):
        render.guest_setup(_guest_with(field), [])


def test_the_heredoc_renderer_passes_ordinary_lines_through():
    assert render.heredoc("ip -batch -", ["link set lo up"]) == "ip -batch - <<'EOF'\nlink set lo up\nEOF"
