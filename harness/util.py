"""Small host-side helpers: the error root, signals, owners, the cache and
run directories."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType


class HarnessError(Exception):
    """An error the user can act on; its message is the whole story."""


class Unavailable(HarnessError):
    """What a test needs is not here: its kernel lacks a feature, the host
    is too slow for it.  The plugin reports it as a skip with this
    message, never as a failure."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread where it was running,
    so that every ``with`` and ``finally`` on the way out runs (and locks
    held there are released before anything is torn down)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


class _Signals:
    """SIGTERM/SIGHUP as Terminated, raised in the main thread once, never
    inside a teardown (teardown_section): a signal that lands in one is
    raised when it ends, so a guest or a lab is never left half removed."""

    def __init__(self):
        self.raised = False
        self.raised_again = 0
        self.pending: int | None = None
        self.depth = 0
        self.owner = os.getpid()
        self.lock = threading.RLock()  # the handler runs in the main thread, which may hold it

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.owner:
            return  # a forked copy of the process
        with self.lock:
            if self.raised:
                # the first one is unwinding: let its teardown finish; a
                # third signal (a teardown that hangs) ends the process
                self.raised_again += 1
                if self.raised_again >= 2:
                    os._exit(128 + signum)
                return
            if self.depth:
                self.pending = signum
                return
            self.raised = True
        raise Terminated(signum)

    def leave(self) -> None:
        with self.lock:
            self.depth -= 1
            signum = self.pending if self.depth == 0 else None
            self.pending = None if signum is not None else self.pending
        if signum is not None:
            if threading.current_thread() is threading.main_thread():
                self.handler(signum, None)
            else:
                os.kill(os.getpid(), signum)  # its handler runs in the main thread


SIGNALS = _Signals()


def install_terminate_handler() -> None:
    """From now on SIGTERM and SIGHUP raise Terminated (see _Signals)."""
    SIGNALS.owner = os.getpid()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, SIGNALS.handler)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """install_terminate_handler() for the duration, the old handlers after."""
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    install_terminate_handler()
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
        SIGNALS.raised, SIGNALS.raised_again, SIGNALS.pending = False, 0, None


@contextlib.contextmanager
def teardown_section() -> Iterator[None]:
    """A teardown that a SIGTERM must not cut in half: the signal is
    raised once the outermost section ends."""
    with SIGNALS.lock:
        SIGNALS.depth += 1
    try:
        yield
    finally:
        SIGNALS.leave()


def describe_error(e: BaseException) -> str:
    """What went wrong, for a user, without a traceback: the harness's own
    errors as they are, the libraries' named by what raised them."""
    if isinstance(e, HarnessError):
        return str(e)
    name = type(e).__name__
    if name == "libvirtError":
        return f"libvirt: {e}"
    if name == "NetlinkError":
        code, text = (e.args + ("", ""))[:2]
        return f"netlink: {os.strerror(code) if isinstance(code, int) else code} ({text or code})"
    if isinstance(e, subprocess.CalledProcessError):
        return f"command failed (rc={e.returncode}): {_argv(e.cmd)}"
    if isinstance(e, subprocess.TimeoutExpired):
        return f"command timed out after {e.timeout:.0f}s: {_argv(e.cmd)}"
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e}"
    return f"internal error: {name}: {e} (run with --debug for the traceback)"


def _argv(argv) -> str:
    return " ".join(map(str, argv)) if isinstance(argv, (list, tuple)) else str(argv)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (owners of guests and labs, for
    reaping).  Pid 0 and negative ones are never an owner: os.kill would
    signal a process group and call it alive."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat
    field 22): with the pid, it names one process even after the pid is
    reused."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def owner_alive(pid: int, start: int | None) -> bool:
    """Whether the owner recorded as (pid, start) still runs: the pid exists,
    is no zombie (an exited process its parent has not reaped holds
    nothing), and, when its start was recorded, is the same process.  An
    entry that cannot be read (gone just now) counts as alive: the next look
    decides."""
    if not pid_alive(pid):
        return False
    fields = _stat_fields(pid)
    if fields is None:
        return True
    if fields[0] in ("Z", "X"):
        return False
    return start is None or process_start(pid) in (None, start)


TEMP_PREFIX = "harness-"
_TEMP_NAME = re.compile(r"\..+\.(\d+)-\d+\.tmp")
_TEMP_DIR = re.compile(rf"{TEMP_PREFIX}[a-z-]*?(\d+)-.+")


def temp_beside(path: Path) -> Path:
    """A temporary name next to ``path`` that says which process made it
    (``.NAME.PID-THREAD.tmp``): a run killed while writing leaves one, and
    the next run removes it (reap_temp)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident() % 10**9}.tmp")


def temp_dir(what: str, parent: Path | None = None) -> Path:
    """A fresh temporary directory ``harness-WHAT-PID-XXXX`` (in /tmp unless
    ``parent``): the caller removes it; a killed run's is reaped."""
    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{what}-{os.getpid()}-", dir=parent))


def reap_temp(dirs, names_only: bool = False) -> list[str]:
    """Remove the temporary files and directories of dead processes in
    ``dirs`` (temp_beside's names, temp_dir's directories; ``names_only``:
    temp_dir's alone, for a directory others share, as /tmp)."""
    reaped = []
    for d in map(Path, dirs):
        try:
            entries = list(d.iterdir())
        except OSError:
            continue
        for entry in entries:
            m = _TEMP_DIR.fullmatch(entry.name) or (None if names_only else _TEMP_NAME.fullmatch(entry.name))
            if m is None or pid_alive(int(m.group(1))):
                continue
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink(missing_ok=True)
            except OSError as e:
                logging.getLogger(__name__).warning("cannot remove %s: %s", entry, e)
                continue
            reaped.append(str(entry))
    return reaped


@contextlib.contextmanager
def locked_dir(path: Path) -> Iterator[None]:
    """An exclusive flock of directory ``path`` (made if missing) while the
    block runs: processes sharing a cache or /run directory take turns,
    and no lock file is left behind."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` whole or not at all (a temporary file beside it,
    renamed over it): a reader or a crash never sees half a file."""
    path = Path(path)
    tmp = temp_beside(path)
    if isinstance(data, str):
        data = data.encode()
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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

ACCELS = ("auto", "kvm", "tcg")  # every --accel takes these
# a guest's size where no test mark, topology or flag says otherwise
GUEST_VCPUS = 2
GUEST_MEMORY_MB = 512


def parse_shard(text: str) -> tuple[int, int]:
    """--shard 'K/N' -> (K, N), 1 <= K <= N."""
    m = re.fullmatch(r"([1-9][0-9]*)/([1-9][0-9]*)", text)
    if m is None or int(m.group(1)) > int(m.group(2)):
        raise HarnessError(f"--shard {text}: expected K/N with 1 <= K <= N (e.g. 2/3)")
    return int(m.group(1)), int(m.group(2))


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter: made if missing,
    and checked when it exists (a directory, not a link, ours, mode 0700)
    rather than trusted -- the guests' command sockets live in these."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise HarnessError(f"{path}: expected a directory, found {'a link' if stat.S_ISLNK(st.st_mode) else 'a file'}")
    if st.st_uid != os.geteuid():
        raise HarnessError(f"{path}: owned by uid {st.st_uid}, not by this user ({os.geteuid()}): not used")
    if st.st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)
    return path


def run_dir(name: str) -> Path:
    """A private runtime directory for one guest or lab (sockets, images)."""
    private_dir(RUN_ROOT)
    return private_dir(RUN_ROOT / name)
