"""Small host-side helpers: running commands, the cache and run directories."""
from __future__ import annotations

import os
from pathlib import Path


class HarnessError(Exception):
    """An error the user can act on; its message is the whole story."""


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
