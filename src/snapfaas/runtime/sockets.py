"""Make the process's network sockets safe to snapshot.

A snapshot is resumed many times, on other hosts and much later: a TCP connection opened
during init cannot survive that (the peer knows one connection, and the kernel here cannot
even dump inet sockets: CRIU 4.1's getsockopt(SO_PASSCRED) fails on them). Just before the
checkpoint, every connected TCP socket is replaced, on the same fd, by one end of a Unix socket
pair whose other end is closed: the restored copy sees a connection the peer closed (send
raises BrokenPipeError, recv returns b""), so client libraries reconnect. Listening TCP and UDP
sockets cannot be emulated that way; they are reported so that the publish fails naming them.
"""

from __future__ import annotations

import fcntl
import os
import socket

INET = (socket.AF_INET, socket.AF_INET6)


def _describe(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def _kill_connection(fd: int) -> None:
    """Put a dead Unix stream endpoint on `fd`, keeping its blocking mode."""
    nonblocking = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
    mine, peer = socket.socketpair()
    try:
        mine.setblocking(not nonblocking)
        os.dup2(mine.fileno(), fd, inheritable=os.get_inheritable(fd))
    finally:
        mine.close()
        peer.close()


def sweep() -> tuple[list[str], list[str]]:
    """Close connected TCP sockets in place; return ``(closed peers, unsupported sockets)``."""
    closed: list[str] = []
    unsupported: list[str] = []
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            probe = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if probe.family not in INET:
                continue  # Unix sockets: CRIU dumps them, or the checkpoint reports why not
            kind = probe.type
            local = probe.getsockname()
            try:
                peer = probe.getpeername()
            except OSError:
                peer = None
        finally:
            probe.close()
        if kind == socket.SOCK_STREAM and peer is not None:
            _kill_connection(fd)
            closed.append(_describe(peer))
        elif kind == socket.SOCK_STREAM:
            unsupported.append(f"listening TCP socket {_describe(local)} (fd {fd})")
        else:
            unsupported.append(f"UDP socket {_describe(local)}" + (f" connected to {_describe(peer)}" if peer else "") + f" (fd {fd})")
    return closed, unsupported
