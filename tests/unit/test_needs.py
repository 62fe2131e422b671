"""Needs against kernels described by their config and modules (no guest)."""

import pytest

from harness.kcheck import check
from harness.kernel.kernel import Kernel
from harness.kernel.needs import Feature, Version, expand, fragment, option, unmet
from harness.measure.pktgen import Pktgen
from harness.measure.rps import SteeredVeth


def kernel(tmp_path, config: str, modules=(), release="6.12.0") -> Kernel:
    (tmp_path / "config").write_text(config)
    moddir = None
    if modules:
        moddir = tmp_path / "lib/modules" / release
        moddir.mkdir(parents=True)
        (moddir / "modules.dep").write_text("".join(f"kernel/net/{m}.ko:\n" for m in modules))
    return Kernel(tmp_path / "bzImage", tmp_path / "config", moddir, release)


def test_builtin_module_and_missing(tmp_path):
    k = kernel(tmp_path, "CONFIG_VETH=y\nCONFIG_NET_PKTGEN=m\n# CONFIG_TUN is not set\n", modules=["pktgen"])
    assert k.provides("CONFIG_VETH") is True
    assert k.provides("CONFIG_NET_PKTGEN", "pktgen") is True
    assert k.provides("CONFIG_TUN", "tun") is False
    assert k.provides("CONFIG_RPS") is False


def test_a_module_counts_only_when_it_can_be_found(tmp_path):
    k = kernel(tmp_path, "CONFIG_NET_PKTGEN=m\n")
    [reason] = unmet(k, Pktgen.NEEDS)
    assert reason.startswith("needs CONFIG_NET_PKTGEN (pktgen, the in-kernel packet generator): built as a module")
    assert "tools/build-kernel" in reason


def test_drivers_declare_what_they_need(tmp_path):
    assert [o.name for o in expand(SteeredVeth)] == ["CONFIG_VETH", "CONFIG_RPS", "CONFIG_NET_PKTGEN"]
    k = kernel(tmp_path, "CONFIG_VETH=y\nCONFIG_RPS=y\n")
    assert [r.split(":")[0] for r in unmet(k, [SteeredVeth])] == [
        "needs CONFIG_NET_PKTGEN (pktgen, the in-kernel packet generator)"]


def test_versions_and_run_time_features(tmp_path):
    k = kernel(tmp_path, "CONFIG_VETH=y\n", release="6.1.192")
    assert unmet(k, [Version((6, 10), "thread_backlog_napi")]) == [
        "needs Linux >= 6.10 (thread_backlog_napi); this kernel is 6.1.192"]
    feature = Feature("seed 002's sysctl", "test -e /x", "build it")
    assert unmet(k, [feature]) == []  # left for run time without a guest to ask
    assert unmet(k, [feature], ask=lambda probe: False) == ["needs seed 002's sysctl; build it"]


def test_a_kernel_without_a_config_is_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "bzImage").write_bytes(b"not a kernel")
    k = Kernel(tmp_path / "bzImage", None, None, "6.12.0")
    assert k.provides("CONFIG_VETH") is None
    asked = []
    assert unmet(k, ["CONFIG_VETH"], ask=lambda probe: asked.append(probe) or False)
    assert asked == ["modprobe -nq veth"]


def test_check_report_and_fragment(tmp_path):
    k = kernel(tmp_path, "CONFIG_VETH=y\nCONFIG_RPS=y\n")
    report = check(k, [("tests/test_threaded_backlog.py::test_a", [SteeredVeth]),
                       ("tests/test_guest.py::test_b", ["CONFIG_VETH"])])
    assert [v.nodeid for v in report.blocked()] == ["tests/test_threaded_backlog.py::test_a"]
    assert report.fragment() == "CONFIG_NET_PKTGEN=y\n"
    table = report.table()
    assert "threaded_backlog     0      1" in table and "CONFIG_NET_PKTGEN=y" in table


def test_fragment_is_sorted_and_unique():
    assert fragment(["CONFIG_VETH", "TUN", "CONFIG_VETH"]) == "CONFIG_TUN=y\nCONFIG_VETH=y\n"
    assert option("VETH").module == "veth"


def test_not_a_need_is_a_type_error():
    with pytest.raises(TypeError, match="not an option name"):
        expand(42)
