"""Run inside a guest: GRO over tun's own NAPI (IFF_NAPI), with stolen heads.

  tun_napi_gro.py NAME COUNT

Writes COUNT TCP segments of one flow into a tap opened with IFF_NAPI, in
a network and mount namespace of its own (nothing else arrives there, and
its /proc/net/snmp counts only ours).  A non-blocking write of a frame
under a page takes tun_build_skb, so each skb's head is a page fragment:
GRO merging one steals its head (NAPI_GRO_FREE_STOLEN_HEAD) and hands the
emptied skb to the NAPI cache (napi_skb_free_stolen_head).  Each write is
one NAPI poll; gro_flush_timeout keeps the merged packet across polls.
The merged packets are dropped by IP (no route in the namespace): Ip
InReceives counts them, one per packet GRO delivered.  Prints one JSON
object: written, rx_packets (the tap's, per segment), ip_in_receives.
"""
import ctypes
import json
import os
import struct
import subprocess
import sys
import time

from tun_reads import open_tap

IFF_NAPI = 0x0010
CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MSS = 1400
SRC, DST = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
FLUSH_TIMEOUT_NS = 20_000_000  # longer than a jiffy at any HZ


def checksum(data, start=0):
    if len(data) % 2:
        data += b"\0"
    s = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def segment(dst_mac, n, payload, payload_sum):
    """Segment n of one flow: consecutive sequence numbers and IP ids, ACK only."""
    tcp = struct.pack("!HHIIBBHHH", 10000, 9, 1 + n * MSS, 1, 5 << 4, 0x10, 502, 0, 0)
    pseudo = SRC + DST + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
    tcp = tcp[:16] + struct.pack("!H", ~checksum(pseudo + tcp, payload_sum) & 0xFFFF) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), n & 0xFFFF, 0x4000, 64, 6, 0,
                     SRC, DST)
    ip = ip[:10] + struct.pack("!H", ~checksum(ip) & 0xFFFF) + ip[12:]
    return dst_mac + b"\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp + payload


def ip_counter(name):
    with open("/proc/self/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Ip:")]
    return int(rows[1][rows[0].index(name)])


def link_counter(name, counter):
    with open(f"/sys/class/net/{name}/statistics/{counter}") as f:
        return int(f.read())


def own_namespaces():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS | CLONE_NEWNET)")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["mount", "-t", "sysfs", "sysfs", "/sys"], check=True)


def main():
    name, count = sys.argv[1], int(sys.argv[2])
    own_namespaces()
    fd = open_tap(name, IFF_NAPI)  # non-blocking: tun_build_skb
    with open(f"/sys/class/net/{name}/gro_flush_timeout", "w") as f:
        f.write(str(FLUSH_TIMEOUT_NS))
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    with open(f"/sys/class/net/{name}/address") as f:
        mac = bytes.fromhex(f.read().strip().replace(":", ""))
    payload = bytes(range(256)) * (MSS // 256) + bytes(range(MSS % 256))
    payload_sum = checksum(payload)
    rx_before, in_before = link_counter(name, "rx_packets"), ip_counter("InReceives")
    written = 0
    for n in range(count):
        if os.write(fd, segment(mac, n, payload, payload_sum)) > 0:
            written += 1
    time.sleep(4 * FLUSH_TIMEOUT_NS / 1e9)  # the flush timer delivers the last packet
    print(json.dumps({"written": written, "rx_packets": link_counter(name, "rx_packets") - rx_before,
                      "ip_in_receives": ip_counter("InReceives") - in_before}), flush=True)
    os.close(fd)


if __name__ == "__main__":
    main()
