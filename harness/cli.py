"""`harness` command line: kernel fetch, and the lab tools built on the same objects."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .util import (ACCELS, GUEST_MEMORY_MB, GUEST_VCPUS, HarnessError, Terminated, describe_error, parse_shard,
                   terminate_as_interrupt)


def cmd_kernel_fetch(args: argparse.Namespace) -> None:
    from .kernel.kernel import fetch_default
    kernel = fetch_default()
    print(f"default kernel: {kernel}")


def cmd_build_shell(args: argparse.Namespace) -> None:
    from .vm.images import build_static_shell
    print(f"static shell: {build_static_shell()}")


def cmd_build_kernel(args: argparse.Namespace) -> None:
    from .kernel import build as kbuild
    source = kbuild.tree_source(args.tree) if args.tree else kbuild.debian_source(args.debian_source)
    soft = [kbuild.collection_config(source, c) for c in args.ksft_config]
    out = kbuild.build(source, patches=args.patch, fragments=args.config, soft_fragments=soft, jobs=args.jobs,
                       minimal=args.minimal)
    print(out)  # the one line on stdout: what --kernel takes


def _source(args):
    from .kernel import build as kbuild
    if not (args.tree or args.debian_source):
        raise HarnessError("give the kernel source: --debian-source SERIES or --tree DIR")
    return kbuild.tree_source(args.tree) if args.tree else kbuild.debian_source(args.debian_source)


def _out_dir(args, what: str):
    import time
    from pathlib import Path
    return Path(args.out or f"logs/{what}-{time.strftime('%Y%m%d-%H%M%S')}")


def _code_under_test(args, out):
    """What --patch, or --function/--lines/--targets, name: (source or None,
    the patch file, the equivalents file or None)."""
    from pathlib import Path
    from .catching.runs import targets_equivalent_file, write_targets_patch
    from .catching.mutants import PatchError, parse_targets
    targets = [*(args.function or []), *(args.lines or [])]
    if args.targets:
        try:
            targets += parse_targets(Path(args.targets).read_text(), args.targets)
        except OSError as e:
            raise HarnessError(f"--targets {args.targets}: {e.strerror}") from None
    if bool(targets) == bool(args.patch):
        raise HarnessError("give the code under test: --patch FILE, or merged code with --function/--lines/--targets")
    if args.patch and not Path(args.patch).is_file():
        raise HarnessError(f"--patch {args.patch}: no such file")
    # A patch can be listed without its source (sibling constants then come
    # from the patch's own lines); everything else reads the source.
    source = _source(args) if targets or not getattr(args, "list", False) or args.tree or args.debian_source \
        else None
    if not targets:
        return source, Path(args.patch), None
    assert source is not None
    if args.base_patch:
        raise HarnessError("--function/--lines/--targets read the pristine source: they take no --base-patch "
                           "(to test a patch's code, give --patch)")
    try:
        patch = write_targets_patch(targets, source, out)
    except PatchError as e:
        raise HarnessError(str(e)) from None
    return source, patch, targets_equivalent_file(Path(args.targets), source) if args.targets else None


def cmd_mutants(args: argparse.Namespace) -> int:
    from .catching.runs import equivalent_file, load_equivalents, run_mutants
    from .catching.mutants import Patch, constants_for, mutants
    shard = parse_shard(args.shard) if args.shard else None  # a bad one fails before anything is built
    out = _out_dir(args, "mutants")
    source, patch, equivalents_file = _code_under_test(args, out)
    if args.list:
        parsed = Patch.parse(patch.read_text())
        found = mutants(parsed, constants_for(parsed, source.files if source else lambda paths: {}))
        equivalents = load_equivalents(patch, found, equivalents_file)
        for m in found:
            mark = "  (equivalent)" if m.id in equivalents else ""
            print(f"{m.id:40} {m.describe()}{mark}")
        print(f"{len(found)} mutants; {len(equivalents)} listed in {equivalents_file or equivalent_file(patch)}")
        return 0
    if not args.k:
        raise HarnessError("-k EXPR: the test selection to run on each mutant is required")
    assert source is not None
    unreached = None
    if args.skip_unreached or args.coverage_from:
        unreached = _unreached(args, source, patch, out)
    report = run_mutants(source, patch, expr=args.k, out_dir=out, base_patches=args.base_patch,
                         fragments=args.config, minimal=args.minimal, deadline_s=args.deadline, only=args.mutant,
                         include_equivalent=args.include_equivalent, keep=args.keep, accel=args.accel,
                         jobs=args.jobs, equivalents_file=equivalents_file, reference_runs=args.reference_runs,
                         unreached=unreached, shard=shard)
    print(report.table())
    for path in report.write(out):
        print(f"wrote {path}")
    return 1 if report.survivors or report.count("unreached") else 0


def _unreached(args, source, patch, out) -> dict[str, str]:
    """The mutants a coverage run (--coverage-from its coverage.json, or one
    run now with the same selection) says no test reaches."""
    from pathlib import Path
    from .catching.coverage import CoverageError, CoverageReport, run_coverage, unreached_mutants
    from .catching.mutants import Patch, constants_for, mutants
    try:
        if args.coverage_from:
            report = CoverageReport.from_json_file(Path(args.coverage_from))
            if report.selection != args.k:
                raise HarnessError(f"--coverage-from {args.coverage_from}: its selection is -k {report.selection!r}, "
                                   f"not -k {args.k!r}")
        else:
            report = run_coverage(source, patch, expr=args.k, out_dir=out / "coverage", base_patches=args.base_patch,
                                  fragments=args.config, minimal=args.minimal, deadline_s=args.deadline,
                                  accel=args.accel, jobs=args.jobs)
            print(report.table())
            report.write(out / "coverage")
    except CoverageError as e:
        raise HarnessError(str(e)) from None
    parsed = Patch.parse(patch.read_text())
    return unreached_mutants(report, mutants(parsed, constants_for(parsed, source.files)))


def cmd_coverage(args: argparse.Namespace) -> int:
    from .catching.coverage import CoverageError, run_coverage
    if not args.k:
        raise HarnessError("-k EXPR: the test selection whose coverage is measured is required")
    out = _out_dir(args, "coverage")
    source, patch, _ = _code_under_test(args, out)
    assert source is not None
    try:
        report = run_coverage(source, patch, expr=args.k, out_dir=out, base_patches=args.base_patch,
                              fragments=args.config, minimal=args.minimal, profile=args.profile,
                              deadline_s=args.deadline, accel=args.accel, jobs=args.jobs)
    except CoverageError as e:
        raise HarnessError(str(e)) from None
    print(report.table())
    for path in report.write(out):
        print(f"wrote {path}")
    if report.status != "passed":
        print(f"coverage: the selection did not pass on the gcov kernel: {report.summary}")
        return 1
    return 0


def cmd_verify_fix(args: argparse.Namespace) -> int:
    from .catching.runs import verify_fix
    verdict = verify_fix(_source(args), args.fix, expr=args.k, out_dir=_out_dir(args, "verify-fix"),
                         base_patches=args.base_patch, fragments=args.config, minimal=args.minimal,
                         deadline_s=args.deadline, accel=args.accel, jobs=args.jobs,
                         every_failure=args.every_failure)
    print(verdict.table())
    return 0 if verdict.verified else 1


def _guest_spec(args):
    from .oneshot import GuestSpec, resolve_kernel
    return GuestSpec(resolve_kernel(args.kernel, args.build), vcpus=args.cpus, memory_mb=args.memory,
                     cmdline=args.cmdline, accel=args.accel, topology=args.topology)


def cmd_run(args: argparse.Namespace) -> int:
    from .oneshot import run_once
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise HarnessError("harness run: give the command after --, e.g. harness run -- uname -r")
    return run_once(_guest_spec(args), command)


def cmd_shell(args: argparse.Namespace) -> int:
    from .oneshot import shell
    return shell(_guest_spec(args))


def _add_guest_args(p):
    p.add_argument("--kernel", help="a bzImage, build-kernel output, or kernel tree (default: Debian's 6.12)")
    p.add_argument("--build", action="store_true",
                   help="build the --kernel tree first when it changed (in place with its own .config, "
                        "else in the cache with the harness's config)")
    p.add_argument("--cpus", type=int, default=GUEST_VCPUS, help=f"vCPUs (default {GUEST_VCPUS})")
    p.add_argument("--memory", type=int, default=GUEST_MEMORY_MB, help=f"MiB (default {GUEST_MEMORY_MB})")
    p.add_argument("--cmdline", default="", help="extra kernel command line")
    p.add_argument("--topology", help="bring up this lab and use its first guest")
    p.add_argument("--accel", default="auto", choices=ACCELS)


def _add_minimal_arg(p):
    p.add_argument("--minimal", action="store_true",
                   help="allnoconfig + images/kconfig/minimal.config as the base instead of defconfig + "
                        "harness.config: alone, the nested guests' kernel (tools/setup builds it); with --config "
                        "images/kconfig/harness.config, the suite's options at a third of defconfig's compile")


def _add_source_args(p):
    where = p.add_mutually_exclusive_group()
    where.add_argument("--tree", help="a kernel source tree (left untouched: patches go on a copy)")
    where.add_argument("--debian-source", metavar="SERIES", help="Debian's linux-source-SERIES (6.1, 6.12)")
    p.add_argument("--base-patch", action="append", default=[],
                   help="applied before the patch under test (repeatable)")
    p.add_argument("--config", action="append", default=[], help="a config fragment to merge (repeatable)")
    _add_minimal_arg(p)
    p.add_argument("-j", "--jobs", type=int, help="parallel build jobs (default: all CPUs)")
    p.add_argument("--deadline", type=float, default=900, help="seconds one run of the selection may take")
    p.add_argument("--accel", default="auto", choices=ACCELS)
    p.add_argument("--out", help="where reports and logs go (default logs/<command>-<time>)")


def _kernel(spec: str, option: str):
    from .kernel.kernel import Kernel, KernelPathError
    try:
        return Kernel.default() if spec in ("default", "") else Kernel.from_path(spec)
    except KernelPathError as e:
        raise HarnessError(f"{option} {e}") from None


def parse_sweep(text: str | None, workload) -> list | None:
    """"conns=16,32,64" -> [16, 32, 64], checked against the workload's parameter."""
    if not text:
        return None
    name, sep, values = text.partition("=")
    if not sep or name != workload.sweep_name:
        expected = f"{workload.sweep_name}=V1,V2,..." if workload.sweep_name else "nothing (it has no sweep)"
        raise HarnessError(f"--sweep {text!r}: workload {workload.name} takes {expected}")
    if all(isinstance(v, str) for v in workload.default_sweep):  # named points (backend=vhost,userspace)
        unknown = [v for v in values.split(",") if v not in workload.default_sweep]
        if unknown:
            raise HarnessError(f"--sweep {text!r}: {unknown[0]!r} is not one of {', '.join(workload.default_sweep)}")
        return values.split(",")
    try:
        return [int(v) for v in values.split(",")]
    except ValueError:
        raise HarnessError(f"--sweep {text!r}: expected integers after '{name}='") from None


def cmd_ab(args: argparse.Namespace) -> None:
    import time
    from pathlib import Path
    from .env import prepare
    from .ab.runner import Side, run_ab
    from .ab.workloads import WORKLOADS
    workload = WORKLOADS.get(args.workload)
    if workload is None:
        raise HarnessError(f"--workload {args.workload!r}: expected one of {', '.join(WORKLOADS)}")
    sweep = parse_sweep(args.sweep, workload)
    pin = [int(c) for c in args.pin.split(",")] if args.pin else None
    base, patched = _kernel(args.base, "--base"), _kernel(args.patched, "--patched")
    accel = prepare(base, args.accel)
    out = Path(args.out or f"logs/ab-{time.strftime('%Y%m%d-%H%M%S')}-{workload.name}")
    report = run_ab(workload, Side("base", base), Side("patched", patched), boots=args.boots, runs=args.runs,
                    warmup=args.warmup, sweep=sweep, topology=args.topology, accel=accel, log_dir=out / "logs",
                    pin=pin, alpha=args.alpha, min_effect_pct=args.min_effect)
    print(report.table())
    for path in report.write(out):
        print(f"wrote {path}")
    print(f"harness overhead: {report.overhead_pct:.1f}% of the workload's own time")


def cmd_kernel_check(args: argparse.Namespace) -> int:
    from .invocation import pytest_args
    from .kcheck import ROOT, check, collect
    from .kernel.kernel import Kernel
    kernel = (Kernel.from_path(args.kernel, args.modules, args.kconfig) if args.kernel else Kernel.default())
    selection = pytest_args(ROOT / "tests", k=args.k, kernel=args.kernel,
                            modules=args.kernel and args.modules, kconfig=args.kernel and args.kconfig)
    report = check(kernel, collect(selection))
    print(report.table(), end="")
    blocked = report.blocked()
    if blocked:
        print(f"{len(blocked)} of {len(report.verdicts)} selected tests cannot run on this kernel", file=sys.stderr)
    return 1 if blocked else 0


def cmd_kernel_show(args: argparse.Namespace) -> None:
    from .kernel.kernel import Kernel
    kernel = Kernel.from_path(args.kernel) if args.kernel else Kernel.default()
    print(f"release: {kernel.release}\nimage: {kernel.image}\n"
          f"config: {kernel.config_path}\nmodules: {kernel.modules_dir}")


def cmd_ksft(args: argparse.Namespace) -> int:
    """`pytest --ksft TARGETS ...` from the repository, without a test file."""
    import pytest
    from .invocation import pytest_args
    from .kcheck import ROOT
    argv = ["--ksft", args.targets, "-rfEs", "--ksft-retries", str(args.retries)]
    for option, value in (("--ksft-source", args.source), ("--ksft-jobs", args.jobs), ("--shard", args.shard)):
        if value is not None:
            argv += [option, str(value)]
    return int(pytest.main(pytest_args(*argv, *args.pytest_args, rootdir=ROOT, k=args.k, accel=args.accel,
                                       kernel=args.kernel)))


def cmd_merge(args: argparse.Namespace) -> int:
    """Shards' results as one: JUnit files, nipa and kcidb results, mutant reports."""
    from pathlib import Path
    from .merge import merge_shards
    out = Path(args.out)
    written, failed = merge_shards([Path(p) for p in args.shards], out)
    for path, summary in written:
        print(f"wrote {path}: {summary}")
    return 1 if failed else 0


def cmd_down(args: argparse.Namespace) -> None:
    """Remove what harness runs left behind: guests of dead owners, or all with --all."""
    import libvirt
    from .vm.guest import DOMAIN_PREFIX, libvirt_conn, reap_stale_guests
    from .lab.hostnet import reap_stale_labs
    removed = reap_stale_guests() + reap_stale_labs()
    if args.all:
        for dom in libvirt_conn().listAllDomains():
            if dom.name().startswith(DOMAIN_PREFIX + "-"):
                try:
                    dom.destroy()
                except libvirt.libvirtError:
                    pass
                removed.append(dom.name())
    for name in removed:
        print(f"removed {name}")
    if not removed:
        print("nothing to remove")


def cmd_up(args: argparse.Namespace) -> int:
    """Bring a lab up and run commands in it until end of input or Ctrl-C
    (--check: only validate the file, without root or a boot)."""
    from .lab import model
    topology = model.load(args.topology)  # a bad file fails here, before anything is prepared
    if args.check:
        guests = [g.name for g in topology.guests]
        nested = [f"{g.name}>{n.name}" for g in topology.guests if g.nested for n in g.nested.guests]
        print(f"{args.topology}: valid: lab {topology.name}, guests {', '.join(guests + nested) or 'none'}")
        return 0
    import readline  # noqa: F401  (line editing for input())
    from .env import prepare
    from .lab.lab import Lab
    from .kernel.kernel import Kernel
    kernel = Kernel.from_path(args.kernel) if args.kernel else Kernel.default()
    accel = prepare(kernel, args.accel)
    lab = Lab(topology, kernel=kernel, accel=accel)
    print(f"bringing up {args.topology} ({accel})...")
    with lab:
        print(lab.describe())
        print(f"up in {lab.up_seconds:.1f} s. Type 'WHERE: COMMAND' with WHERE one of "
              "GUEST, GUEST/CONTAINER, host/NAMESPACE, or GUEST>... in the lab GUEST hosts; "
              "Ctrl-D or Ctrl-C to tear down.")
        while True:
            try:
                line = input("lab> ").strip()
            except Terminated:
                raise  # torn down by the way out, and exits 128 + signal
            except (EOFError, KeyboardInterrupt):
                print()
                break
            if line:
                _run_in_lab(lab, line, args.timeout)
    print("torn down")
    return 0


def _run_in_lab(lab, line: str, timeout: float):
    """One 'WHERE: COMMAND' line; whatever it does wrong is an error line,
    never the end of the session."""
    where, sep, command = line.partition(":")
    if not sep or not command.strip():
        print("error: expected WHERE: COMMAND, e.g. g1: ip -br link")
        return
    try:
        result = lab.where(where.strip()).run(command.strip(), timeout=timeout)
    except Exception as e:  # noqa: BLE001 -- the user's typing must not tear the lab down
        print(f"error: {describe_error(e)}")
        return
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.rc:
        print(f"[rc={result.rc}]")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness")
    parser.add_argument("--debug", action="store_true", help="show a traceback for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    kernel = sub.add_parser("kernel", help="the guest kernel").add_subparsers(dest="what", required=True)
    kernel.add_parser("fetch", help="fetch the default kernel into the cache").set_defaults(fn=cmd_kernel_fetch)
    kc = kernel.add_parser("check", help="what the suite can run on a kernel, and the config fragment it lacks")
    kc.add_argument("--kernel", help="a bzImage, build-kernel output or kernel tree (default: Debian's 6.12)")
    kc.add_argument("--modules")
    kc.add_argument("--kconfig")
    kc.add_argument("-k", help="only the tests this pytest -k expression selects")
    kc.set_defaults(fn=cmd_kernel_check)
    show = kernel.add_parser("show", help="describe a kernel")
    show.add_argument("kernel", nargs="?")
    show.set_defaults(fn=cmd_kernel_show)
    sub.add_parser("build-shell", help="build the guests' static dash (tools/setup runs it)"
                   ).set_defaults(fn=cmd_build_shell)
    bk = sub.add_parser("build-kernel", help="build a guest kernel (prints the directory --kernel takes)")
    where = bk.add_mutually_exclusive_group(required=True)
    where.add_argument("--tree", help="a kernel source tree (left untouched: patches go on a copy)")
    where.add_argument("--debian-source", metavar="SERIES", help="Debian's linux-source-SERIES (6.1, 6.12)")
    bk.add_argument("--patch", action="append", default=[], help="apply this patch first (repeatable)")
    bk.add_argument("--config", action="append", default=[], help="a config fragment to merge (repeatable)")
    bk.add_argument("--ksft-config", action="append", default=[], metavar="COLLECTION",
                    help="merge a kselftest collection's config (tools/testing/selftests/COLLECTION/config, "
                         "e.g. net), naming its options that do not survive (repeatable)")
    _add_minimal_arg(bk)
    bk.add_argument("-j", "--jobs", type=int, help="parallel jobs (default: all CPUs)")
    bk.set_defaults(fn=cmd_build_kernel)
    mu = sub.add_parser("mutants", help="build each mutant of a patch and run a test selection on it")
    mu.add_argument("--patch", help="the patch whose added lines are mutated")
    mu.add_argument("--function", action="append", metavar="FILE:NAME",
                    help="mutate merged code: this function of the source (repeatable; no patch needed)")
    mu.add_argument("--lines", action="append", metavar="FILE:A-B",
                    help="mutate merged code: lines A-B of a file of the source (repeatable)")
    mu.add_argument("--targets", metavar="FILE",
                    help="mutate merged code: the FILE:FUNCTION or FILE:A-B lines of FILE (images/seeds/*.targets)")
    mu.add_argument("-k", help="the test selection (pytest -k) run on each mutant")
    mu.add_argument("--mutant", action="append", help="only this mutant (repeatable; see --list)")
    mu.add_argument("--list", action="store_true", help="list the mutants and exit (builds nothing)")
    mu.add_argument("--include-equivalent", action="store_true", help="run the mutants listed as equivalent too")
    mu.add_argument("--keep", action="store_true", help="keep each mutant's kernel in the build cache")
    mu.add_argument("--reference-runs", type=int, default=1, metavar="N",
                    help="the unmutated kernel must pass the selection N times in a row first (default 1)")
    mu.add_argument("--skip-unreached", action="store_true",
                    help="run the selection on a gcov build first; mutants on lines no test ran are reported "
                         "unreached, not built")
    mu.add_argument("--shard", metavar="K/N",
                    help="build and test every N-th mutant from the K-th (equivalent and unreached ones in "
                         "shard 1); `harness merge` joins the shards' mutants.json")
    mu.add_argument("--coverage-from", metavar="COVERAGE_JSON",
                    help="--skip-unreached with a `harness coverage` run's coverage.json of the same selection")
    _add_source_args(mu)
    mu.set_defaults(fn=cmd_mutants)
    cv = sub.add_parser("coverage", help="which added lines of a patch a test selection ran, and which test")
    cv.add_argument("--patch", help="the patch whose added lines are measured")
    cv.add_argument("--function", action="append", metavar="FILE:NAME", help="merged code: this function")
    cv.add_argument("--lines", action="append", metavar="FILE:A-B", help="merged code: these lines")
    cv.add_argument("--targets", metavar="FILE", help="merged code: a targets file (images/seeds/*.targets)")
    cv.add_argument("--profile", action="append", default=[], metavar="FILE.c",
                    help="profile this object too (for a patch to headers: the .c files that use them)")
    cv.add_argument("-k", help="the test selection (pytest -k)")
    _add_source_args(cv)
    cv.set_defaults(fn=cmd_coverage, deadline=1800)
    vf = sub.add_parser("verify-fix", help="the selection must fail without a fix and pass with it")
    vf.add_argument("--fix", required=True, help="the fix: a patch applied after the base patches")
    vf.add_argument("-k", required=True, help="the test selection (pytest -k)")
    vf.add_argument("--every-failure", action="store_true",
                    help="without the fix, run the whole selection (default: stop at its first failure)")
    _add_source_args(vf)
    vf.set_defaults(fn=cmd_verify_fix)
    ab = sub.add_parser("ab", help="compare a base and a patched kernel on a workload")
    ab.add_argument("--base", required=True, help="a kernel --kernel accepts, or 'default'")
    ab.add_argument("--patched", required=True, help="a kernel --kernel accepts, or 'default'")
    ab.add_argument("--workload", required=True,
                    help="pktgen_queue_xmit, http_proxy, tcp_stream or guest_rx_pps")
    ab.add_argument("--boots", type=int, default=3,
                    help="independent boots (fresh labs) per side, alternating sides (default 3)")
    ab.add_argument("--runs", type=int, default=5, help="measured runs per boot (default 5)")
    ab.add_argument("--warmup", type=int, default=1, help="discarded runs at the start of each boot (default 1)")
    ab.add_argument("--sweep", help="e.g. conns=16,32,64,1024 (http_proxy), threads=1,2 or backend=vhost "
                                    "(nested_rx_pps)")
    ab.add_argument("--topology", help="a topology file instead of the workload's own")
    ab.add_argument("--accel", default="auto", choices=ACCELS)
    ab.add_argument("--pin", help="host CPUs for the vCPUs, e.g. 0,1")
    ab.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    ab.add_argument("--min-effect", type=float, default=2.0,
                    help="smallest change in %% called a difference (default 2)")
    ab.add_argument("--out", help="directory for the JSON and PNG (default logs/ab-<time>-<workload>)")
    ab.set_defaults(fn=cmd_ab)
    run = sub.add_parser("run", help="boot a kernel, run one command in the current directory, tear down")
    _add_guest_args(run)
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD...")
    run.set_defaults(fn=cmd_run)
    sh = sub.add_parser("shell", help="boot a kernel and give an interactive shell in it (Ctrl-D ends it)")
    _add_guest_args(sh)
    sh.set_defaults(fn=cmd_shell)
    up = sub.add_parser("up", help="bring a topology up and run commands in it")
    up.add_argument("topology", help="a topologies/*.yaml file")
    up.add_argument("--check", action="store_true", help="only validate the file (no root, no boot)")
    up.add_argument("--kernel")
    up.add_argument("--accel", default="auto", choices=ACCELS)
    up.add_argument("--timeout", type=float, default=120.0, help="per command, seconds")
    up.set_defaults(fn=cmd_up)
    ks = sub.add_parser("ksft", help="run kernel selftests in guests (pytest --ksft without a test file)")
    ks.add_argument("targets", help="kselftest collections, comma-separated: net,net/forwarding,drivers/net")
    ks.add_argument("-k", help="only the tests this pytest -k expression selects (e.g. 'rps or rtnetlink')")
    ks.add_argument("--kernel", help="the guest kernel (default: Debian's 6.12)")
    ks.add_argument("--source", help="a kernel tree or debian:SERIES (default: the --kernel tree, else debian:6.12)")
    ks.add_argument("--jobs", type=int, help="guests at once (default: from host CPUs and memory)")
    ks.add_argument("--retries", type=int, default=1, help="reruns of a failed test in a fresh guest (default 1)")
    ks.add_argument("--shard", metavar="K/N", help="the K-th of N shards of the selected tests")
    ks.add_argument("--accel", choices=ACCELS)
    ks.epilog = "After --, more pytest options: harness ksft net -k tun -- --junitxml ksft.xml"
    ks.set_defaults(fn=cmd_ksft)
    mg = sub.add_parser("merge", help="join shards' results (JUnit XML, results-nipa/kcidb.json, mutants.json, "
                                      "ksft.json)")
    mg.add_argument("shards", nargs="+", help="each shard's result files, or directories holding them")
    mg.add_argument("--out", required=True, help="directory for the merged files")
    mg.set_defaults(fn=cmd_merge)
    down = sub.add_parser("down", help="remove guests left by killed runs (--keep-guests, SIGKILL)")
    down.add_argument("--all", action="store_true", help="also guests of running harness processes")
    down.set_defaults(fn=cmd_down)
    argv = list(sys.argv[1:] if argv is None else argv)
    ours = argv[:argv.index("--")] if "--" in argv else argv
    if "--debug" in ours[1:]:  # anywhere among the harness's own options
        argv.remove("--debug")
        argv.insert(0, "--debug")
    pytest_args: list[str] = []
    command = [a for a in ours if a != "--debug"][:1]
    if command == ["ksft"] and "--" in argv:  # pytest's own options, untouched by this parser
        argv, pytest_args = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = parser.parse_args(argv)
    args.pytest_args = pytest_args
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    try:
        # SIGTERM and SIGHUP unwind like Ctrl-C: every lab, guest, build
        # and child run on the way out is torn down before the exit
        with terminate_as_interrupt():
            return args.fn(args) or 0
    except Terminated as e:
        print(f"harness: {e}: torn down", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("harness: interrupted: torn down", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        from .invocation import named_by_option
        from .kernel.kernel import KernelPathError
        # every subcommand's kernel paths come from --kernel/--modules/--kconfig
        what = named_by_option(e) if isinstance(e, KernelPathError) else describe_error(e)
        print(f"harness: {what}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
