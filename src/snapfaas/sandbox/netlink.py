"""rtnetlink requests for preparing an environment's network: the few `ip` commands
`sandbox.network` needs (a veth pair with one end in another namespace, an IPv4 address, a link
up, a default route), sent on a NETLINK_ROUTE socket instead of run as `ip` processes.

An `ip` process per step cost ~3 ms of CPU (fork, exec, dynamic loading) and two ran per
environment; a request here is one sendmsg and one recv of an acknowledgement. A netlink socket
acts on the network namespace of the thread that opened it, so open a `Route` in the namespace
you want to change (`network.in_namespace`). The message builders are pure; `Route` does the I/O.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
IFLA_IFNAME = 3
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_GATEWAY = 5
IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefix length, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst/src length, tos, table, protocol, scope, type, flags
RECEIVE_MAX = 64 * 1024


def attribute(kind: int, value: bytes) -> bytes:
    """One rtattr (length, type, value), padded to 4 bytes (pure)."""
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def _name(value: str) -> bytes:
    return value.encode() + b"\0"


def _ipv4(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


def veth_pair(name: str, peer: str, peer_netns_fd: int) -> tuple[int, int, bytes]:
    """RTM_NEWLINK: a veth pair `name` (here) <-> `peer` (moved into the namespace open at
    `peer_netns_fd`), as ``ip link add NAME type veth peer name PEER netns NS``."""
    peer_info = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attribute(IFLA_IFNAME, _name(peer)) \
        + attribute(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
    link_info = attribute(IFLA_INFO_KIND, b"veth") + attribute(IFLA_INFO_DATA, attribute(VETH_INFO_PEER, peer_info))
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attribute(IFLA_IFNAME, _name(name)) \
        + attribute(IFLA_LINKINFO, link_info)
    return RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body


def link_up(index: int) -> tuple[int, int, bytes]:
    """RTM_NEWLINK on link `index`: IFF_UP set (``ip link set DEV up``)."""
    return RTM_NEWLINK, 0, _IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)


def ipv4_address(index: int, address: str, prefix: int) -> tuple[int, int, bytes]:
    """RTM_NEWADDR: `address`/`prefix` on link `index` (``ip addr add A/P dev DEV``)."""
    packed = _ipv4(address)
    body = _IFADDR.pack(socket.AF_INET, prefix, 0, RT_SCOPE_UNIVERSE, index) \
        + attribute(IFA_LOCAL, packed) + attribute(IFA_ADDRESS, packed)
    return RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body


def default_route(gateway: str) -> tuple[int, int, bytes]:
    """RTM_NEWROUTE: the main table's IPv4 default route via `gateway` (``ip route add default
    via GW``)."""
    body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0) \
        + attribute(RTA_GATEWAY, _ipv4(gateway))
    return RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body


def message(kind: int, flags: int, body: bytes, sequence: int) -> bytes:
    """A netlink request asking for an acknowledgement (pure)."""
    return _HEADER.pack(_HEADER.size + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK, sequence, 0) + body


def acknowledgement(data: bytes, sequence: int) -> int | None:
    """The error code (0: success, else a positive errno) of the NLMSG_ERROR answering request
    `sequence` in `data`, or None if `data` holds none (pure)."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        if kind == NLMSG_ERROR and seq == sequence and length >= _HEADER.size + 4:
            (error,) = struct.unpack_from("=i", data, offset + _HEADER.size)
            return -error
        offset += (length + 3) & ~3
    return None


class Route:
    """A NETLINK_ROUTE socket in the calling thread's network namespace; a context manager.
    `request` sends one message and waits for its acknowledgement; raises OSError naming
    `what` on a refusal."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self._socket.bind((0, 0))
        self._sequence = 0

    def __enter__(self) -> Route:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._socket.close()

    def request(self, what: str, request: tuple[int, int, bytes]) -> None:
        self._sequence += 1
        kind, flags, body = request
        self._socket.send(message(kind, flags, body, self._sequence))
        while True:
            error = acknowledgement(self._socket.recv(RECEIVE_MAX), self._sequence)
            if error is None:
                continue  # not our answer (nothing else is asked on this socket, but be strict)
            if error:
                raise OSError(error, f"netlink {what}: {os.strerror(error)}")
            return
