"""The one command line of a pytest run with the harness's options, for
whatever starts one: a mutant's selection, the CLI, the benchmarks, a test
that runs an inner session.  Pure: builds argument lists, runs nothing."""
from __future__ import annotations

import os
import sys
from typing import Any

# the command-line option each path of a kernel comes from (KernelPathError.field)
KERNEL_PATH_OPTIONS = {"image": "--kernel", "modules": "--modules", "kconfig": "--kconfig"}

# the options a child run inherits so that it tests the same kernel the same way
KERNEL_OPTIONS = ("kernel", "modules", "kconfig", "accel")


def pytest_args(*args: str | os.PathLike, rootdir: str | os.PathLike | None = None, k: str | None = None,
                kernel: str | os.PathLike | None = None, modules: str | os.PathLike | None = None,
                kconfig: str | os.PathLike | None = None, accel: str | None = None,
                logs: str | os.PathLike | None = None, junit: str | os.PathLike | None = None,
                quiet: bool = False) -> list[str]:
    """pytest's arguments (for ``pytest.main``): no cache provider (a child
    run writes nothing into the tree), paths made absolute (the child may run
    elsewhere), then ``args`` (test paths and any other option) last."""
    argv = ["-p", "no:cacheprovider"]
    if quiet:
        argv.append("-q")
    for option, value in (("--rootdir", rootdir), ("--kernel", kernel), ("--modules", modules),
                          ("--kconfig", kconfig), ("--harness-logs", logs)):
        if value:
            argv += [option, os.path.abspath(value)]
    if junit:
        argv.append(f"--junitxml={os.path.abspath(junit)}")
    if accel:
        argv += ["--accel", accel]
    if k:
        argv += ["-k", k]
    return argv + [str(a) for a in args]


def pytest_argv(*args: str | os.PathLike, **options: Any) -> list[str]:
    """A child pytest's whole command line, under this process's interpreter
    (the venv's, with the harness installed)."""
    return [sys.executable, "-m", "pytest", *pytest_args(*args, **options)]


def inherited(config: Any) -> dict[str, Any]:
    """The kernel options of a running session (a ``pytest.Config``), to pass
    on to a child run: ``pytest_argv(path, **inherited(pytestconfig))``."""
    return {name: config.getoption(name) for name in KERNEL_OPTIONS if config.getoption(name)}


def named_by_option(error: Any) -> str:
    """A kernel path error (``KernelPathError``) named by the option it came
    from: ``--kernel /x/bzImage: no such file``."""
    return f"{KERNEL_PATH_OPTIONS[error.field]} {error}"
