"""Init-time sockets and a snapshot: which ones it can hold, and how connections come back.

The runtime (runtime/sockets.py) reports at the restore barrier the TCP connections it broke
(``closed``: peers) and the inet sockets it left for CRIU (``kept``: UDP, listening or
unconnected TCP, each ``{"socket": description, "port": local port}``). Pure decisions here;
the snapshot manager does the I/O around them.

Connections (``--snapstart-connections``, `CONNECTION_MODES`): on AWS a restored microVM still
holds the connection's state, but the peer forgot it long ago (it timed out, or the server
restarted), so the first segment the function sends is answered with a RST: the default,
``reset``, makes the first use fail with ECONNRESET. ``closed`` (EOF, as if the peer closed
politely) and ``blackhole`` (writes vanish, reads wait for the caller's timeout: a peer behind
a firewall that drops the packets) reproduce the other ways a stale connection dies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

CONNECTION_MODES = ("reset", "closed", "blackhole")
DEFAULT_CONNECTION_MODE = "reset"
UNSUPPORTED_SOCKET = "Runtime.SnapshotUnsupportedSocket"
INET_PATCH = "inet-sockets-without-passcred"
PASSCRED_KERNEL = (6, 16)  # from here on CRIU needs INET_PATCH to dump any inet socket

_EFFECT = {
    "reset": "is reset in restored environments (the first use raises ConnectionResetError)",
    "closed": "is closed in restored environments (reads return EOF)",
    "blackhole": "is silently dropped in restored environments (writes vanish, reads wait for the client's timeout)",
}


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as ``6.18.3-cloud-amd64``; (0, 0) if unreadable."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def unsupported(kept: Iterable[Mapping[str, object]], criu_patches: Iterable[str], kernel: tuple[int, int],
                shared_network: bool) -> str | None:
    """Why a snapshot cannot hold the `kept` sockets (the publish fails with
    `UNSUPPORTED_SOCKET`), or None if it can.

    * the kernel answers EOPNOTSUPP to SO_PASSCRED on inet sockets and CRIU lacks the patch
      that skips it (its dump would fail);
    * ``--sandbox-network host``: restored copies share the host's ports, so a socket bound to
      a port would collide with the next copy's (an unbound one, port 0, is fine).
    """
    kept = list(kept)
    if not kept:
        return None
    names = "; ".join(str(k["socket"]) for k in kept)
    if kernel >= PASSCRED_KERNEL and INET_PATCH not in set(criu_patches):
        return (f"Init left sockets the snapshot cannot hold: {names}. This server's CRIU lacks snapfaas's {INET_PATCH} "
                "patch (scripts/install-system-deps.sh builds it); close them in a before-snapshot hook and re-create "
                "them after restore.")
    bound = [str(k["socket"]) for k in kept if k.get("port")]
    if shared_network and bound:
        return (f"Init left sockets bound to ports: {'; '.join(bound)}. With --sandbox-network host every restored "
                "copy shares the host's ports; close them in a before-snapshot hook and re-create them after restore.")
    return None


def connection_warning(peer: str, mode: str) -> str:
    """The publish-log warning naming a TCP connection init left open."""
    return (f"WARNING SnapStart: the TCP connection to {peer} opened during init {_EFFECT[mode]} "
            f"(--snapstart-connections {mode}); clients must reconnect\n")
