"""Small host-side helpers: running commands, the cache and run directories."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


class HarnessError(Exception):
    """An error the user can act on; its message is the whole story."""


class CommandFailed(HarnessError):
    def __init__(self, argv, result):
        self.argv = argv
        self.result = result
        super().__init__(
            f"command failed (rc={result.returncode}): {' '.join(map(str, argv))}\n"
            f"--- stdout ---\n{_text(result.stdout)[-4000:]}\n"
            f"--- stderr ---\n{_text(result.stderr)[-4000:]}")


def _text(b):
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def cmd(argv, check=True, timeout=120, **kw) -> subprocess.CompletedProcess:
    """Run a host command (argv list, never a shell), capturing text output."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    result = subprocess.run(list(map(str, argv)), timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise CommandFailed(argv, result)
    return result


def pid_alive(pid: int) -> bool:
    """Whether a process exists (owners of guests and labs, for reaping)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def cache_dir() -> Path:
    """Per-user cache: kernels, initramfs images, the KVM probe verdict."""
    base = os.environ.get("HARNESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "netdev-harness")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


# the repository: images/, topologies/, tests/ (the guests see it through 9p)
REPO = Path(__file__).resolve().parent.parent
RUN_ROOT = Path(os.environ.get("HARNESS_RUN_DIR", "/run/netdev-harness"))


def run_dir(name: str) -> Path:
    """A private runtime directory for one guest or lab (sockets, images)."""
    path = RUN_ROOT / name
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
