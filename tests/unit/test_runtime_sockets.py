"""runtime/sockets.py with real sockets on this host's loopback (no sandbox): the sweep keeps
UDP and listening sockets, breaks connected TCP sockets in place, and after a "restore" puts a
connection broken per mode on the same fd, keeping its blocking mode.

A sweep replaces every connected TCP socket of its process, so each test body runs in a forked
child (`in_child`): the test process's own connections are never touched (a child's dup2 only
changes the child's descriptor table).
"""

from __future__ import annotations

import functools
import os
import socket
import traceback
from collections.abc import Callable, Iterator

import pytest

from snapfaas.runtime import sockets


def in_child(test: Callable[..., None]) -> Callable[..., None]:
    """Run the test body in a forked child; its failure (traceback) fails the test."""
    @functools.wraps(test)
    def run(*args: object, **kwargs: object) -> None:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report and exit without running pytest's teardown
            os.close(read)
            code = 0
            try:
                test(*args, **kwargs)
            except BaseException:  # noqa: BLE001 - everything goes back to the parent
                os.write(write, traceback.format_exc().encode())
                code = 1
            os._exit(code)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            report = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, f"test body failed in the child:\n{report}"
    return run


@pytest.fixture
def server() -> Iterator[socket.socket]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s


@in_child
def test_sweep_keeps_udp_and_listening_sockets_and_breaks_connections(server: socket.socket) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.create_connection(server.getsockname(), timeout=5)
    accepted, _ = server.accept()
    try:
        swept = sockets.sweep()
        texts = [k["socket"] for k in swept.kept]
        host, port = server.getsockname()
        assert f"listening TCP socket {host}:{port} (fd {server.fileno()})" in texts
        assert f"UDP socket 127.0.0.1:{udp.getsockname()[1]} (fd {udp.fileno()})" in texts
        assert f"UDP socket 0.0.0.0:0 (fd {unbound.fileno()})" in texts
        assert {"socket": f"UDP socket 0.0.0.0:0 (fd {unbound.fileno()})", "port": 0} in swept.kept
        # both ends of the connection are connected TCP sockets of this process: both broken
        assert (client.fileno(), f"{host}:{port}") in swept.connections
        assert accepted.fileno() in [fd for fd, _ in swept.connections]
        assert client.recv(4) == b""  # the dead placeholder: a connection the peer closed
        udp.sendto(b"still", udp.getsockname())  # kept sockets are untouched
        assert udp.recv(8) == b"still"
    finally:
        for s in (udp, unbound, client, accepted):
            s.close()


@pytest.mark.parametrize(("mode", "send", "recv"), [
    ("reset", ConnectionResetError, b""),
    ("closed", None, b""),
    ("blackhole", None, TimeoutError),
])
@in_child
def test_break_connections_per_mode(server: socket.socket, mode: str, send: type | None, recv: object) -> None:
    client = socket.create_connection(server.getsockname(), timeout=5)
    accepted, _ = server.accept()
    accepted.close()
    try:
        client.settimeout(0.5)  # non-blocking under the hood: the replacement must keep that
        swept = sockets.sweep()
        fds = [(fd, peer) for fd, peer in swept.connections if fd == client.fileno()]
        assert sockets.break_connections(fds, mode) == []
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM  # a real TCP socket again
        if send is None:
            client.sendall(b"x")
        else:
            with pytest.raises(send):
                client.sendall(b"x")
        if isinstance(recv, bytes):
            assert client.recv(4) == recv
        else:
            with pytest.raises(recv):  # type: ignore[call-overload]
                client.recv(4)
    finally:
        client.close()


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown connection mode 'drop'"):
        sockets.broken_connection("drop")


@in_child
def test_a_failing_replacement_is_reported_and_keeps_the_placeholder() -> None:
    a, b = socket.socketpair()
    b.close()
    try:
        failures = sockets.break_connections([(a.fileno() + 10_000, "10.0.0.1:5432")], "reset")
        assert len(failures) == 1
        assert "connection to 10.0.0.1:5432" in failures[0] and "failed at step 'break connection (reset)'" in failures[0]
    finally:
        a.close()
