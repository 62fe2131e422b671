"""Shipped topologies come up, talk where they should and only there, and
leave nothing behind (issue 3)."""
import json
import os
import re
import signal
import subprocess
import textwrap
import time

import pytest
from pyroute2 import IPRoute

from harness.invocation import inherited, pytest_argv

from harness.vm.guest import libvirt_conn, reap_stale_guests
from harness.lab.hostnet import host_objects, lab_id_of, reap_stale_labs
from harness.util import RUN_ROOT, pid_alive
from harness.lab.lab import Lab, LabError
from harness.lab.topo import Topo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def lab_objects(lab_id=None):
    """Host links, namespaces and domains that carry a lab prefix."""
    doms = {d.name() for d in libvirt_conn().listAllDomains()
            if lab_id is None or d.name().endswith(f"-{lab_id}")}
    return host_objects(lab_id) | doms


def tcp_transfer(server, client, address, nbytes=1 << 20, port=5001):
    """Send nbytes over one TCP connection; the byte count the server read."""
    sink = server.spawn(f"socat -u TCP-LISTEN:{port},reuseaddr - | wc -c")
    for _ in range(100):
        sent = client.run(f"head -c {nbytes} /dev/zero | socat -u - TCP:{address}:{port}", timeout=60)
        if sent.rc == 0:
            break
        time.sleep(0.1)  # the listener is not up yet
    assert sent.rc == 0, sent.stderr
    return int(sink.wait(60).stdout)


def new_lab(harness, topo: Topo) -> Lab:
    return Lab(topo.build(), kernel=harness.kernel, accel=harness.accel, log_dir=harness.log_dir)


def up_fails_leaving_nothing(harness, topo: Topo, error=Exception, match=None):
    """Lab.up() of ``topo`` raises ``error`` matching ``match`` and leaves no
    prefixed link, namespace or domain behind.  Returns the error text."""
    lab = new_lab(harness, topo)
    before = lab_objects()
    with pytest.raises(error, match=match) as err:
        lab.up()
    # another run's or pytest worker's labs may come and go meanwhile: what
    # is new must belong to one of them, nothing to this process
    assert {o for o in lab_objects() - before if not of_another_live_run(o)} == set()
    return str(err.value)


def of_another_live_run(name: str) -> bool:
    """A domain or lab object named by a live process other than this one
    (its pid in the domain's name, or its lab's registry's owner)."""
    m = re.match(r"harness-(\d+)-", name)
    if m:
        owner = int(m.group(1))
    else:
        lab_id = lab_id_of(name)
        try:
            owner = int(json.loads((RUN_ROOT / "labs" / f"{lab_id}.json").read_text())["owner"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
    return owner != os.getpid() and pid_alive(owner)


def unreachable(where, address):
    result = where.run(f"ping -c1 -W1 {address}")
    return result.rc != 0


def test_single_mq_queues_mtu_txqlen_backend_and_traffic(lab, harness):
    single = lab("single-mq")
    g1, peer = single.guest("g1"), single.host_ns("peer")
    combined = single.guest("g1").check("ethtool -l eth0").stdout.split("Current hardware settings:")[1]
    assert re.search(r"Combined:\s+2\b", combined)
    assert g1.check("cat /sys/class/net/eth0/queues/rx-0/rps_cpus /sys/class/net/eth0/queues/rx-1/rps_cpus"
                    ).stdout.split() == ["2", "1"]
    with IPRoute() as ipr:
        tap = ipr.link("get", index=ipr.link_lookup(ifname=single.taps["t0"])[0])[0]
    assert tap.get("txqlen") == 1000 and tap.get("mtu") == 1500
    # libvirt gives vhost-net to KVM domains only (the lab checks what QEMU holds)
    vhost = os.path.exists("/dev/vhost-net") and harness.accel == "kvm"
    assert single.backends["t0"] == ("vhost" if vhost else "userspace")
    assert peer.check("ping -c2 -W2 10.77.0.2").rc == 0
    assert tcp_transfer(g1, peer, "10.77.0.2") == 1 << 20


def test_guest_pair_talk_over_the_host_bridge(lab):
    pair = lab("guest-pair")
    g1, g2 = pair.guest("g1"), pair.guest("g2")
    assert g1.check("ping -c2 -W2 10.77.1.2").rc == 0
    assert tcp_transfer(g2, g1, "10.77.1.2") == 1 << 20


def test_proxy_hops_http_goes_through_the_proxy_only(lab):
    hops = lab("proxy-hops")
    client = hops.container("g1", "client")
    proxy = hops.container("g1", "proxy")
    assert client.check("curl -s -m 10 http://10.77.2.1/").stdout == "ok\n"
    assert proxy.check("ping -c1 -W2 10.77.3.2").rc == 0
    assert tcp_transfer(proxy, client, "10.77.2.1") == 1 << 20
    assert unreachable(client, "10.77.3.2")  # no route around the proxy
    for where, dev in ((client, "c0"), (proxy, "p0"), (proxy, "p1"), (hops.container("g1", "server"), "s0")):
        assert json.loads(where.check(f"tc -j qdisc show dev {dev}").stdout)[0]["kind"] == "pfifo_fast"
    workers = hops.container("g1", "server").check("ps -C nginx -o args= | grep -c 'worker process'").stdout.strip()
    assert int(workers) == 4  # two nginx (proxy, server), one worker per vCPU each


def test_host_client_reaches_guest_proxy_not_server(lab):
    hg = lab("host-to-guest-proxy")
    client = hg.host_ns("client")
    assert client.check("curl -s -m 10 http://10.77.7.2/").stdout == "ok\n"
    assert tcp_transfer(hg.guest("g1"), client, "10.77.4.2") == 1 << 20
    assert unreachable(client, "10.77.5.2")


def test_lab_leaves_the_hosts_own_addresses_and_routes_alone(harness):
    def host_state():
        """The host's addresses and routes, less those on another live run's
        links (a pytest worker's labs beside this one get IPv6 link-locals)."""
        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.link("dump")}
            others = {i for i, name in names.items() if of_another_live_run(name or "")}
            addrs = sorted((a.get("index"), a.get("address")) for a in ipr.addr("dump") if a["index"] not in others)
            routes = sorted(str(r.get("dst")) + str(r.get("gateway")) for r in ipr.route("dump")
                            if r.get("oif") not in others)
        return addrs, routes
    before = host_state()
    lab = harness.start_lab("single-mq")
    try:
        assert host_state()[1] == before[1]
        assert {a for a in host_state()[0]} - set(before[0]) == set()
    finally:
        harness.stop_lab(lab)
    assert host_state() == before
    assert lab_objects(lab.lab_id) == set()


def test_a_lab_that_fails_mid_setup_leaves_nothing(harness):
    bad = Topo("fails")
    br0 = bad.bridge("br0")
    bad.guest("g1", sysctls={"net.core.no_such_sysctl": "1"}).nic("t0", bridge=br0, address="10.77.9.2/24")
    assert "no_such_sysctl" in up_fails_leaving_nothing(harness, bad)


def test_vhost_on_without_the_device_fails_clearly_and_creates_nothing(harness):
    if os.path.exists("/dev/vhost-net"):
        pytest.skip("this host has /dev/vhost-net: the error path needs it missing")
    vh = Topo("vh")
    vh.guest("g1").nic("t0", vhost="on")
    up_fails_leaving_nothing(harness, vh, LabError,
                             r"guests\[0\]\.nics\[0\]\.vhost: on, but this host has no /dev/vhost-net")


HOLD = textwrap.dedent('''
    import time
    def test_hold(lab):
        l = lab("{path}")
        print("LAB-UP", l.lab_id, flush=True)
        time.sleep(600)
''')


def test_two_labs_side_by_side_and_a_killed_ones_leftovers_are_reaped(lab, pytestconfig, tmp_path):
    (tmp_path / "test_hold.py").write_text(HOLD.replace("{path}", f"{ROOT}/topologies/single-mq.yaml"))
    argv = pytest_argv("-s", tmp_path / "test_hold.py", rootdir=tmp_path, logs=tmp_path / "logs",
                       **inherited(pytestconfig))
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        mine = lab("single-mq")          # the same topology, in this process
        child_id = None
        for line in child.stdout:  # pytest -s prints the file name first
            if "LAB-UP" in line:
                child_id = line.split("LAB-UP", 1)[1].split()[0]
                break
        assert child_id and child_id != mine.lab_id
        assert lab_objects(child_id) and lab_objects(mine.lab_id)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    reap_stale_guests()
    reap_stale_labs()
    assert lab_objects(child_id) == set()
    # The live lab was not touched by the reaping.
    assert mine.host_ns("peer").check("ping -c1 -W2 10.77.0.2").rc == 0


def test_each_guest_can_name_its_own_kernel(harness):
    """kernel: a path per guest (here the default kernel's image for one guest,
    the default for the other); a bad path fails before anything exists."""
    image = harness.kernel.image
    kernels = Topo("kernels")
    br0 = kernels.bridge("br0")
    kernels.guest("g1", kernel=str(image)).nic("t1", bridge=br0, address="10.77.10.1/24")
    kernels.guest("g2").nic("t2", bridge=br0, address="10.77.10.2/24")
    lab = new_lab(harness, kernels)
    with lab:
        assert lab.guest("g1").kernel.image == image
        assert lab.guest("g1").check("ping -c1 -W2 10.77.10.2").rc == 0
    badk = Topo("badk")
    badk.guest("g1", kernel="/nonexistent/bzImage")
    # the error names the topology's field, not a command-line option
    up_fails_leaving_nothing(harness, badk, LabError, r"guests\[0\]\.kernel: /nonexistent/bzImage: no such file")
