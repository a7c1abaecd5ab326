"""snapshot/sockets.py: which init-time sockets a snapshot holds, and the publish warning."""

from __future__ import annotations

import pytest

from snapfaas.snapshot import sockets

PATCHED = ("map-pages-copy-on-write", sockets.INET_PATCH)
UDP_UNBOUND = {"socket": "UDP socket 0.0.0.0:0 (fd 5)", "port": 0}
LISTENER = {"socket": "listening TCP socket 127.0.0.1:7000 (fd 6)", "port": 7000}


def test_nothing_kept_is_always_fine() -> None:
    assert sockets.unsupported([], (), (6, 18), shared_network=True) is None


def test_patched_criu_holds_inet_sockets_in_an_own_namespace() -> None:
    assert sockets.unsupported([UDP_UNBOUND, LISTENER], PATCHED, (6, 18), shared_network=False) is None


def test_unpatched_criu_on_a_new_kernel_fails_naming_the_sockets_and_the_patch() -> None:
    reason = sockets.unsupported([LISTENER], ("map-pages-copy-on-write",), (6, 16), shared_network=False)
    assert reason is not None
    assert "listening TCP socket 127.0.0.1:7000 (fd 6)" in reason and sockets.INET_PATCH in reason


def test_unpatched_criu_on_an_older_kernel_is_fine() -> None:
    assert sockets.unsupported([LISTENER], (), (6, 15), shared_network=False) is None


def test_host_network_refuses_bound_ports_only() -> None:
    assert sockets.unsupported([UDP_UNBOUND], PATCHED, (6, 18), shared_network=True) is None
    reason = sockets.unsupported([UDP_UNBOUND, LISTENER], PATCHED, (6, 18), shared_network=True)
    assert reason is not None and "127.0.0.1:7000" in reason and "0.0.0.0:0" not in reason


@pytest.mark.parametrize(("release", "version"), [
    ("6.18.3-cloud-amd64", (6, 18)), ("5.10.0-28-amd64", (5, 10)), ("6.16rc1", (6, 16)), ("weird", (0, 0)),
])
def test_kernel_version(release: str, version: tuple[int, int]) -> None:
    assert sockets.kernel_version(release) == version


@pytest.mark.parametrize("mode", sockets.CONNECTION_MODES)
def test_connection_warning_names_peer_and_mode(mode: str) -> None:
    line = sockets.connection_warning("10.0.0.5:5432", mode)
    assert line.startswith("WARNING SnapStart: the TCP connection to 10.0.0.5:5432 opened during init ")
    assert f"(--snapstart-connections {mode})" in line and line.endswith("\n")


def test_default_mode_is_reset() -> None:
    assert sockets.DEFAULT_CONNECTION_MODE == "reset"
