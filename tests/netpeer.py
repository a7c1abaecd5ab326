"""A test host of the suite's own: a network namespace with a veth to the host, where tests run
servers that functions reach over the network (their environments have network namespaces of
their own: the host's loopback is out of their reach, a routed peer is not).

    host: tp<id>h  10.250.<n>.1/24  <== veth ==>  peer netns tp<id>: eth0 10.250.<n>.2/24
                                                   (+ 169.254.169.254/32 with `metadata=True`,
                                                    routed from the host via the peer)

Traffic only goes to this namespace, which the suite creates and deletes itself. ``<n>`` is one
no host interface has yet (chosen under a host-wide lock): two peers on one /24 (another suite
running on the host, or one a killed run left) would route this peer's traffic to the other,
whose namespace answers connection refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import subprocess
from collections.abc import Iterator

from snapfaas.sandbox.network import in_namespace

METADATA_IP = "169.254.169.254"
SUBNETS = 200  # 10.250.20.0/24 .. 10.250.219.0/24
CHOICE_LOCK = "/run/snapfaas-test-netpeer.lock"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _subnets_in_use() -> set[int]:
    """The ``<n>`` of every 10.250.<n>.x address on a host interface."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], check=True, capture_output=True, text=True).stdout
    return {int(n) for n in re.findall(r"inet 10\.250\.(\d+)\.", out)}


@contextlib.contextmanager
def _choice_lock() -> Iterator[None]:
    """Serializes choosing a subnet and claiming it (its host address) across processes."""
    fd = os.open(CHOICE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class NetPeer:
    def __init__(self, tag: str, metadata: bool = False) -> None:
        self.name = f"tp{os.getpid() % 100000}{tag}"[:12]
        self.host_if = self.name + "h"
        self.metadata = metadata
        self.close()
        with _choice_lock():
            used = _subnets_in_use()
            start = os.getpid() + sum(tag.encode())
            free = [n for n in ((start + k) % SUBNETS + 20 for k in range(SUBNETS)) if n not in used]
            if not free:
                raise RuntimeError("setting up the test network peer failed at step 'choose a subnet': "
                                   "every 10.250.<n>.0/24 of the suite's range is on a host interface")
            n = free[0]
            self.host_ip = f"10.250.{n}.1"
            self.ip = f"10.250.{n}.2"
            _ip("netns", "add", self.name)
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", "eth0", "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.name, "addr", "add", f"{self.ip}/24", "dev", "eth0")
        _ip("-n", self.name, "link", "set", "eth0", "up")
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("-n", self.name, "route", "add", "default", "via", self.host_ip)
        if metadata:
            _ip("-n", self.name, "addr", "add", f"{METADATA_IP}/32", "dev", "eth0")
            _ip("route", "replace", f"{METADATA_IP}/32", "via", self.ip, "dev", self.host_if)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def listen(self, port: int = 0, address: str = "0.0.0.0", kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket bound inside the peer (listening, for TCP)."""
        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(64)
            return sock

        return in_namespace(self.path, make)  # type: ignore[return-value]

    def close(self) -> None:
        if getattr(self, "metadata", False):
            subprocess.run(["ip", "route", "del", f"{METADATA_IP}/32"], capture_output=True)
        subprocess.run(["ip", "link", "delete", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
