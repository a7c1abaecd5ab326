"""Addresses, names and firewall of environments' network namespaces (snapfaas.sandbox.network)."""

from __future__ import annotations

import ipaddress

import pytest

from snapfaas.sandbox.network import BLOCKS, SLOTS_PER_BLOCK, SUBNET, block_network, plan, ruleset


def test_slots_are_disjoint_slash30s_inside_their_block() -> None:
    seen: set[str] = set()
    for block in (0, 1, BLOCKS - 1):
        net = block_network(block)
        assert net.subnet_of(SUBNET)  # type: ignore[arg-type]
        for index in (0, 1, SLOTS_PER_BLOCK - 1):
            slot = plan(block, index)
            pair = ipaddress.ip_network(f"{slot.host_ip}/30", strict=False)
            assert pair.subnet_of(net)  # type: ignore[arg-type]
            assert ipaddress.ip_address(slot.env_ip) in pair
            assert slot.host_ip not in seen and slot.env_ip not in seen
            seen.update((slot.host_ip, slot.env_ip))


def test_names_fit_ifnamsiz_and_carry_the_block() -> None:
    slot = plan(BLOCKS - 1, SLOTS_PER_BLOCK - 1)
    assert len(slot.host_if) <= 15 and len(slot.name) <= 15
    assert slot.host_if.startswith("sf0f") and slot.name.startswith("sf0f")
    assert plan(3, 7).host_if != plan(4, 7).host_if


@pytest.mark.parametrize("block, index", [(-1, 0), (BLOCKS, 0), (0, SLOTS_PER_BLOCK)])
def test_out_of_range_slots_are_refused(block: int, index: int) -> None:
    with pytest.raises(ValueError):
        plan(block, index)


def test_ruleset_blocks_host_link_local_and_other_environments_and_masquerades() -> None:
    text = ruleset(2)
    assert 'table inet snapfaas_sf02' in text
    assert 'iifname "sf02h*" drop' in text  # input: nothing on the host answers an environment
    forbidden = text.split("ip daddr {", 1)[1].split("}", 1)[0]
    for net in ("169.254.0.0/16", "127.0.0.0/8", str(SUBNET), str(block_network(2))):
        assert net in forbidden
    assert "fib daddr type { local, broadcast, multicast } drop" in text
    assert 'oifname "sf02h*" drop' in text  # nothing new enters an environment
    assert f"ip saddr {block_network(2)} oifname != \"sf02h*\" masquerade" in text
    assert "meta nfproto ipv6 drop" in text
