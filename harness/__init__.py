"""QEMU/virtio-net full-system test harness for the Linux packet path."""
from .util import HarnessError

__all__ = ["HarnessError"]
