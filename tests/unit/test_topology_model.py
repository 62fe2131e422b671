"""Topology files: the shipped ones load; malformed ones give one clear error
naming the file and the field, and create nothing (issue 3, model part)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.lab.model import TopologyError, load

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "topologies").glob("*.yaml"))
BAD = sorted((Path(__file__).parent / "topologies" / "bad").glob("*.yaml"))


def _host_objects():
    netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    return set(os.listdir("/sys/class/net")), netns


def test_the_four_shipped_topologies_exist():
    assert {p.stem for p in SHIPPED} >= {"single-mq", "guest-pair", "proxy-hops", "host-to-guest-proxy"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_topology_loads(path):
    topo = load(path)
    assert topo.guests and topo.source == str(path)


def test_single_mq_reads_like_its_description():
    topo = load(ROOT / "topologies" / "single-mq.yaml")
    g1 = topo.guest("g1")
    assert g1.vcpus == 2 and len(g1.nics) == 1 and g1.nics[0].queues == 2
    assert topo.host[0].links[0].peer == "tap:t0"


def test_proxy_hops_has_client_proxy_server():
    containers = load(ROOT / "topologies" / "proxy-hops.yaml").guest("g1").containers
    assert [c.name for c in containers] == ["client", "proxy", "server"]
    proxy = next(c for c in containers if c.name == "proxy")
    assert proxy.http_proxy == "10.77.3.2:80" and not proxy.forwarding


def test_at_least_forty_malformed_files():
    assert len(BAD) >= 40


def expected_error(path: Path) -> str:
    return path.read_bytes().splitlines()[0].decode().removeprefix("# expect: ")


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_malformed_topology_gives_one_clear_error(path):
    expected = expected_error(path)
    before = _host_objects()
    with pytest.raises(TopologyError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert expected in message, message
    assert "\n" not in message
    assert _host_objects() == before


def test_a_nested_lab_reads_like_its_description():
    topo = load(ROOT / "topologies" / "nested-vhost.yaml")
    host1 = topo.guest("host1")
    inner = host1.nested
    assert inner is not None and inner.name == "inner"
    assert (inner.source, inner.path) == (topo.source, "guests[0].nested.")
    n1 = inner.guest("n1")
    assert [(n.tap, n.queues, n.vhost) for n in n1.nics] == [("t0", 2, "auto"), ("t1", 1, "off")]
    assert n1.kernel == "minimal" and inner.host[0].links[1].peer == "tap:t1"
    # the outer guest's kernel must hold the nested lab's host side
    assert {"CONFIG_TUN", "CONFIG_BRIDGE", "CONFIG_NET_NS", "CONFIG_VETH"} <= set(host1.NEEDS)


LOAD_ALL = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
from harness.lab.model import TopologyError, load
for path in sys.argv[1:]:
    t0 = time.monotonic()
    try:
        load(path)
        print("LOADED", path)
    except TopologyError as e:
        print(f"{time.monotonic() - t0:.3f}", str(e).replace(chr(10), "|"))
"""


def test_every_malformed_file_fails_in_under_a_second_within_512_mib():
    """Hostile files (alias bombs, 20,000-deep nesting, huge numbers) cost
    nothing: each is refused in under a second by a process whose address
    space is capped at 512 MiB."""
    proc = subprocess.run([sys.executable, "-c", LOAD_ALL, *map(str, BAD)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(BAD), proc.stdout
    for path, line in zip(BAD, lines, strict=False):
        seconds, message = line.split(" ", 1)
        assert seconds != "LOADED" and float(seconds) < 1.0, line
        assert expected_error(path) in message, (path.name, message)


def test_a_file_over_a_mebibyte_is_refused_unread(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: lab\n" + "# padding\n" * 120_000)
    with pytest.raises(TopologyError, match="expected a topology under 1024 KiB"):
        load(big)
