"""The rtnetlink messages `sandbox.network` sends (pure encoders and the acknowledgement parser)."""

from __future__ import annotations

import socket
import struct

from snapfaas.sandbox import netlink


def _attributes(data: bytes) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    while offset < len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        out.append((kind, data[offset + 4:offset + length]))
        offset += (length + 3) & ~3
    return out


def test_attributes_are_padded_to_four_bytes() -> None:
    assert netlink.attribute(3, b"eth0\0") == struct.pack("=HH", 9, 3) + b"eth0\0" + b"\0\0\0"
    assert len(netlink.attribute(1, b"1234")) == 8


def test_veth_pair_names_both_ends_and_moves_the_peer_by_namespace_fd() -> None:
    kind, flags, body = netlink.veth_pair("sf00h0001", "eth0", 7)
    assert kind == netlink.RTM_NEWLINK and flags == netlink.NLM_F_CREATE | netlink.NLM_F_EXCL
    attrs = dict(_attributes(body[16:]))
    assert attrs[netlink.IFLA_IFNAME] == b"sf00h0001\0"
    info = dict(_attributes(attrs[netlink.IFLA_LINKINFO]))
    assert info[netlink.IFLA_INFO_KIND] == b"veth"
    peer = dict(_attributes(info[netlink.IFLA_INFO_DATA]))[netlink.VETH_INFO_PEER]
    peer_attrs = dict(_attributes(peer[16:]))
    assert peer_attrs[netlink.IFLA_IFNAME] == b"eth0\0"
    assert struct.unpack("=I", peer_attrs[netlink.IFLA_NET_NS_FD]) == (7,)


def test_address_link_up_and_route_bodies() -> None:
    _, _, body = netlink.ipv4_address(5, "10.200.0.2", 30)
    assert struct.unpack_from("=BBBBI", body) == (socket.AF_INET, 30, 0, 0, 5)
    assert dict(_attributes(body[8:]))[netlink.IFA_LOCAL] == bytes([10, 200, 0, 2])
    _, _, body = netlink.link_up(9)
    assert struct.unpack("=BxHiII", body) == (socket.AF_UNSPEC, 0, 9, netlink.IFF_UP, netlink.IFF_UP)
    _, _, body = netlink.default_route("10.200.0.1")
    assert body[4] == netlink.RT_TABLE_MAIN and body[7] == netlink.RTN_UNICAST
    assert dict(_attributes(body[12:]))[netlink.RTA_GATEWAY] == bytes([10, 200, 0, 1])


def test_message_asks_for_an_acknowledgement() -> None:
    data = netlink.message(netlink.RTM_NEWADDR, netlink.NLM_F_CREATE, b"abcd", 42)
    length, kind, flags, sequence, _ = struct.unpack_from("=IHHII", data)
    assert (length, kind, sequence) == (20, netlink.RTM_NEWADDR, 42)
    assert flags == netlink.NLM_F_CREATE | netlink.NLM_F_REQUEST | netlink.NLM_F_ACK


def _error(sequence: int, error: int) -> bytes:
    return struct.pack("=IHHII", 36, netlink.NLMSG_ERROR, 0, sequence, 0) + struct.pack("=i", error) + b"\0" * 16


def test_acknowledgement_reads_the_answer_to_our_request() -> None:
    assert netlink.acknowledgement(_error(3, 0), 3) == 0
    assert netlink.acknowledgement(_error(3, -17), 3) == 17  # EEXIST
    assert netlink.acknowledgement(_error(2, -17) + _error(3, 0), 3) == 0
    assert netlink.acknowledgement(_error(2, 0), 3) is None
    assert netlink.acknowledgement(b"\0" * 8, 3) is None
