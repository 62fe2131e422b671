"""The nest server: runs in a lab guest that hosts a nested lab
(``python3 -m harness.lab.nestd``, started by harness.lab.nest.GuestHost).

It is the host side of the nested lab, done by the same code as on the
real host: hostnet applies the lab's plan (taps, bridges, namespaces) and
the guest's own libvirtd starts the nested domains, paused.  The harness
outside drives it with one JSON request per line on stdin and reads one
JSON reply per line on stdout:

    {"id": 1, "op": "hello", "accel": "auto", "kernel": "/.../vmlinux", "initrd": "/.../x.cpio"}
    {"id": 1, "accel": "tcg", "vhost_net": true, "release": "6.12.117+deb12-amd64"}

Operations: hello, plumb (a render.host_plan), mkdir, create (domain XML),
resume, suspend, vhost_fds, destroy, rmdir, teardown.  An error is
``{"id": N, "error": "..."}``.  The consoles and command ports of the
nested guests are not relayed here: the harness reaches each socket
through an agent stream of its own (socat).  When stdin ends (the harness
closed it, or its guest channel is gone) the server removes everything it
made and exits.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from ..util import RUN_ROOT, HarnessError
from ..vm.accel import resolve
from ..vm.contracts import Domain
from ..vm.guest import LOCAL
from .hostnet import HostNet
from .hosts import VHOST_NET

log = logging.getLogger("harness.nestd")


class NestServer:
    def __init__(self):
        self.nets: list[HostNet] = []
        self.domains: dict[str, Domain] = {}
        self.dirs: set[Path] = set()

    # -- operations -----------------------------------------------------------
    def hello(self, accel: str, kernel: str, initrd: str) -> dict:
        chosen = resolve(accel, Path(kernel), Path(initrd))
        return {"accel": chosen, "vhost_net": os.path.exists(VHOST_NET), "release": os.uname().release}

    def plumb(self, plan: list[dict]) -> dict:
        net = HostNet()
        self.nets.append(net)  # torn down even when the plan fails halfway
        made = net.apply(plan)
        return {"lab_id": net.lab_id, **made}

    def mkdir(self, name: str) -> dict:
        path = LOCAL.run_dir(name)
        self.dirs.add(path)
        return {"path": str(path)}

    def rmdir(self, path: str) -> dict:
        if Path(path).parent != RUN_ROOT:
            raise HarnessError(f"rmdir {path}: not a run directory of this server")
        LOCAL.remove_dir(Path(path))
        self.dirs.discard(Path(path))
        return {}

    def create(self, name: str, xml: str) -> dict:
        try:
            self.domains[name] = LOCAL.create(xml)
        except HarnessError as e:  # libvirt cuts QEMU's own words short: its log has them
            log_path = Path(f"/var/log/libvirt/qemu/{name}.log")
            tail = log_path.read_text(errors="replace").splitlines()[-8:] if log_path.exists() else []
            raise HarnessError("\n".join([str(e), f"--- {log_path} (tail) ---", *tail])) from None
        return {}

    def resume(self, name: str) -> dict:
        self._domain(name).resume()
        return {}

    def suspend(self, name: str) -> dict:
        self._domain(name).suspend()
        return {}

    def vhost_fds(self, name: str) -> dict:
        return {"count": self._domain(name).vhost_fds()}

    def destroy(self, name: str) -> dict:
        domain = self.domains.pop(name, None)
        if domain is not None:
            domain.destroy()
        return {}

    def teardown(self) -> dict:
        for name in list(self.domains):
            self.destroy(name)
        while self.nets:
            self.nets.pop().teardown()
        for path in list(self.dirs):
            shutil.rmtree(path, ignore_errors=True)
        self.dirs.clear()
        return {}

    def _domain(self, name: str) -> Domain:
        try:
            return self.domains[name]
        except KeyError:
            raise HarnessError(f"no domain {name} here") from None

    # -- the loop ---------------------------------------------------------------
    def serve(self, requests: Iterable[str], replies: TextIO) -> None:
        try:
            for line in requests:
                request = json.loads(line)
                rid, op = request.pop("id"), request.pop("op")
                try:
                    if op.startswith("_") or not hasattr(self, op) or op == "serve":
                        raise HarnessError(f"unknown operation {op!r}")
                    reply = {"id": rid, **getattr(self, op)(**request)}
                except Exception as e:  # the caller raises it, with this text
                    log.exception("%s failed", op)
                    reply = {"id": rid, "error": f"{type(e).__name__}: {e}"}
                replies.write(json.dumps(reply) + "\n")
                replies.flush()
        finally:
            self.teardown()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="nestd: %(message)s")
    # replies alone on the real stdout: anything else that writes to fd 1
    # (a library's print, a child process) lands on stderr instead
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    NestServer().serve(sys.stdin, replies)


if __name__ == "__main__":
    main()
