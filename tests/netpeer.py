"""A test host of the suite's own: a network namespace with a veth to the host, where tests run
servers that functions reach over the network (their environments have network namespaces of
their own: the host's loopback is out of their reach, a routed peer is not).

    host: tp<id>h  10.250.<n>.1/24  <== veth ==>  peer netns tp<id>: eth0 10.250.<n>.2/24
                                                   (+ 169.254.169.254/32 with `metadata=True`,
                                                    routed from the host via the peer)

Traffic only goes to this namespace, which the suite creates and deletes itself.
"""

from __future__ import annotations

import os
import socket
import subprocess

from snapfaas.sandbox.network import in_namespace

METADATA_IP = "169.254.169.254"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class NetPeer:
    def __init__(self, tag: str, metadata: bool = False) -> None:
        n = (os.getpid() + sum(tag.encode())) % 200 + 20
        self.name = f"tp{os.getpid() % 100000}{tag}"[:12]
        self.host_if = self.name + "h"
        self.host_ip = f"10.250.{n}.1"
        self.ip = f"10.250.{n}.2"
        self.metadata = metadata
        self.close()
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
