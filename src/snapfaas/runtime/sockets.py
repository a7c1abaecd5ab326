"""The process's network sockets across a snapshot, as on a Lambda microVM.

On AWS the whole microVM is snapshotted: sockets that live inside it (a UDP socket, a listening
TCP socket, like the X-Ray emitter of AWS Lambda Powertools' ``Tracer()``) come back working,
and a TCP connection to the outside comes back with its state, while the peer forgot it long
ago. Here each environment has a network namespace of its own, and CRIU (with snapfaas's
``inet-sockets-without-passcred`` patch) dumps and restores UDP and listening/unconnected TCP
sockets in it: `sweep` leaves them alone and lists them (``kept``).

A TCP connection cannot come back: the restored copy is in another namespace, on another
host, much later. Just before the checkpoint `sweep` puts on its fd one end of a Unix socket
pair whose other end is closed (a connection the peer closed: dumpable, and safe if nothing
else happens). After the restore, `break_connections` replaces that placeholder with a real
TCP socket broken the way the operator chose (``--snapstart-connections``), so client
libraries see what they would see on AWS and reconnect:

* ``reset`` (default, AWS's behavior): the peer answered with a RST; the first ``send``/
  ``recv`` raises ``ConnectionResetError`` (then reads return EOF and writes EPIPE).
* ``closed``: the peer closed the connection (FIN); ``recv`` returns ``b""``.
* ``blackhole``: the peer vanished without a word; writes are accepted (until the buffers
  fill) and reads block until the caller's own timeout.

The replacements are connections over the namespace's loopback, made by the runtime itself; a
blackhole's far end is held (never read) by the runtime for the life of the process.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import select
import socket
import struct

INET = (socket.AF_INET, socket.AF_INET6)
MODES = ("closed", "reset", "blackhole")
SETTLE_MS = 2000  # longest wait for the loopback peer's FIN/RST to arrive (immediate in practice)
_held: list[socket.socket] = []  # far ends of blackholed connections: alive and unread forever


@dataclasses.dataclass
class Sweep:
    """What `sweep` found: connections it broke (fd, peer) and sockets the snapshot keeps."""

    connections: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    kept: list[dict[str, object]] = dataclasses.field(default_factory=list)  # {"socket": description, "port": local port}

    @property
    def peers(self) -> list[str]:
        return [peer for _, peer in self.connections]


def _describe(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def _replace(fd: int, replacement: socket.socket) -> None:
    """Put `replacement` on `fd` (closing what was there), keeping fd's blocking mode and
    inheritability; `replacement` itself is closed."""
    nonblocking = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
    inheritable = os.get_inheritable(fd)
    try:
        replacement.setblocking(not nonblocking)
        os.dup2(replacement.fileno(), fd, inheritable=inheritable)
    finally:
        replacement.close()


def _kill_connection(fd: int) -> None:
    """Put a dead Unix stream endpoint (its peer closed) on `fd`."""
    mine, peer = socket.socketpair()
    peer.close()
    _replace(fd, mine)


def sweep() -> Sweep:
    """Break connected TCP sockets in place (dead placeholders) and list the inet sockets the
    snapshot keeps (UDP, listening or unconnected TCP). Unix sockets are CRIU's business."""
    found = Sweep()
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            probe = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # gone meanwhile (the listing's own fd, say)
        try:
            if probe.family not in INET:
                continue
            kind = probe.type
            local = probe.getsockname()
            try:
                peer = probe.getpeername()
            except OSError:
                peer = None
            listening = kind == socket.SOCK_STREAM and probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        finally:
            probe.close()
        if kind == socket.SOCK_STREAM and peer is not None:
            _kill_connection(fd)
            found.connections.append((fd, _describe(peer)))
        elif kind == socket.SOCK_STREAM:
            text = f"{'listening' if listening else 'unconnected'} TCP socket {_describe(local)} (fd {fd})"
            found.kept.append({"socket": text, "port": local[1]})
        else:
            text = f"UDP socket {_describe(local)}" + (f" connected to {_describe(peer)}" if peer else "") + f" (fd {fd})"
            found.kept.append({"socket": text, "port": local[1]})
    return found


def _wait(sock: socket.socket, events: int) -> None:
    poller = select.poll()
    poller.register(sock, events)
    poller.poll(SETTLE_MS)


def broken_connection(mode: str) -> socket.socket:
    """A TCP socket over loopback whose peer is gone the way `mode` says (see the module doc)."""
    if mode not in MODES:
        raise ValueError(f"unknown connection mode {mode!r} (one of {', '.join(MODES)})")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        try:
            far, _ = listener.accept()
        except OSError:
            client.close()
            raise
    if mode == "blackhole":
        _held.append(far)  # alive, never read: writes fill its buffer, reads wait
        return client
    if mode == "reset":
        far.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    far.close()
    _wait(client, select.POLLIN | select.POLLERR | select.POLLHUP)  # the FIN/RST has arrived
    return client


def break_connections(connections: list[tuple[int, str]], mode: str) -> list[str]:
    """After a restore: put a connection broken per `mode` on each swept fd. Returns one
    message per fd that failed (it keeps the dead placeholder: a closed connection)."""
    failures: list[str] = []
    for fd, peer in connections:
        try:
            _replace(fd, broken_connection(mode))
        except OSError as exc:
            failures.append(f"connection to {peer} (fd {fd}) failed at step 'break connection ({mode})': {exc}")
    return failures
