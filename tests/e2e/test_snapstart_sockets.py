"""SnapStart with sockets open at the snapshot, as on a Lambda microVM: real boto3, real server,
real runc + CRIU (with snapfaas's inet-sockets patch).

* UDP sockets and listening TCP sockets opened during init survive the restore, in each
  restored environment's own network namespace: the listener accepts connections made inside
  the environment, the UDP sockets still send and receive.
* A TCP connection to the outside opened during init comes back broken per
  ``--snapstart-connections``: reset (the default: ECONNRESET on first use), closed (EOF) or
  blackhole (writes vanish, reads wait for the function's timeout). The publish log names the
  connection (a warning; the publish succeeds), and nothing the restored copy writes reaches the
  peer. The peer is a TCP server in the suite's peer namespace (`tests.netpeer`).

* With ``--sandbox-network host`` (copies share the host's ports) a socket bound to a port fails
  the publish with Runtime.SnapshotUnsupportedSocket, naming it.

Every test ends with the platform still serving (an on-demand invoke of an unrelated function).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import ProcessFactory, ServerHandle, create, free_port, invoke_json, require_root, run_servers
from tests.e2e.snapstart_support import SNAPSTART, assert_restored, assert_warm, function_log, publish, wait_for
from tests.netpeer import NetPeer

SOCKETS_APP = """
import os, socket, time
LISTEN_PORT, UDP_PORT = 7000, 7001
LISTENER = socket.socket()
LISTENER.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
LISTENER.bind(("127.0.0.1", LISTEN_PORT))
LISTENER.listen()
RECEIVER = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a bound UDP socket: a local receiver
RECEIVER.bind(("127.0.0.1", UDP_PORT))
EMITTER = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # unbound, like the X-Ray SDK's emitter
EMITTER.sendto(b"init", ("127.0.0.1", UDP_PORT))  # bound to an ephemeral port now
RECEIVER.recvfrom(16)

def handler(event, context):
    LISTENER.settimeout(5)
    RECEIVER.settimeout(5)
    with socket.create_connection(("127.0.0.1", LISTEN_PORT), timeout=5) as client:
        accepted, _ = LISTENER.accept()
        with accepted:
            accepted.sendall(b"accepted")
            greeting = client.recv(16).decode()
    EMITTER.sendto(event["datagram"].encode(), ("127.0.0.1", UDP_PORT))
    datagram, sender = RECEIVER.recvfrom(64)
    time.sleep(event.get("hold", 0))  # keeps this environment busy: concurrent invokes restore others
    return {"init_type": os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"], "greeting": greeting,
            "stream": os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN") or os.environ["AWS_ACCESS_KEY_ID"],  # one per environment
            "datagram": datagram.decode(), "from_emitter": sender[1] == EMITTER.getsockname()[1]}
"""

CONNECTION_APP = """
import os, socket
CONN = socket.create_connection((os.environ["PEER_HOST"], int(os.environ["PEER_PORT"])), timeout=5)
CONN.sendall(b"init;")  # held open through init, like a database connection

def handler(event, context):
    CONN.settimeout(event.get("timeout", 2))
    out = {}
    try:
        CONN.sendall(b"after-restore;")
        out["send"] = "ok"
    except OSError as exc:
        out["send_error"] = type(exc).__name__
    try:
        out["recv"] = CONN.recv(16).decode()
    except OSError as exc:
        out["recv_error"] = type(exc).__name__
    return out
"""

PLAIN_APP = """
def handler(event, context):
    return "serving"
"""


class Peer:
    """A TCP server in the suite's peer namespace that records what each connection sent and
    holds every connection open until the test ends (a database that forgot nothing yet)."""

    def __init__(self, netpeer: NetPeer) -> None:
        self.netpeer = netpeer
        self.sock = netpeer.listen()
        self.received: list[bytearray] = []
        self.lock = threading.Lock()
        self.held: list[object] = []
        self.thread = threading.Thread(target=self._accept, name="peer", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed at the end of the test
            data = bytearray()
            with self.lock:
                self.received.append(data)
                self.held.append(conn)
            threading.Thread(target=self._read, args=(conn, data), daemon=True).start()

    def _read(self, conn, data: bytearray) -> None:  # type: ignore[no-untyped-def]
        while True:
            try:
                chunk = conn.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                data.extend(chunk)

    def everything(self) -> list[bytes]:
        with self.lock:
            return [bytes(d) for d in self.received]

    def close(self) -> None:
        self.sock.close()
        with self.lock:
            for conn in self.held:
                conn.close()  # type: ignore[attr-defined]


@pytest.fixture
def peer(netpeer: NetPeer) -> Iterator[Peer]:
    p = Peer(netpeer)
    yield p
    p.close()


CONNECTION_MODES = ("reset", "closed", "blackhole")


@pytest.fixture(scope="module")
def own_servers(processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerHandle]]:
    """The module's servers, one per test, started (and stopped) together: the module's `server`
    (defaults), one per ``--snapstart-connections`` mode (reset: the default, no flag) and one
    with ``--sandbox-network host``."""
    require_root()
    specs = {"server": (tmp_path_factory.mktemp("server"), ["--keep-alive", "60"])}
    specs.update({mode: (tmp_path_factory.mktemp(f"conn-{mode}"),
                         ["--keep-alive", "60"] + ([] if mode == "reset" else ["--snapstart-connections", mode]))
                  for mode in CONNECTION_MODES})
    specs["host-net"] = (tmp_path_factory.mktemp("host-net"), ["--sandbox-network", "host"])
    yield from run_servers(processes, specs)


@pytest.fixture(scope="module")
def server(own_servers: dict[str, ServerHandle]) -> ServerHandle:
    """The suite's usual module server (`tests.conftest.server`: ``--keep-alive 60``), started with the others."""
    return own_servers["server"]


def still_serving(lam, name: str) -> None:  # type: ignore[no-untyped-def]
    """The platform keeps serving: an on-demand function answers."""
    with contextlib.suppress(lam.exceptions.ResourceConflictException):
        create(lam, name, {"app.py": PLAIN_APP})
    _, body = invoke_json(lam, name, {})
    assert body == "serving"


def test_udp_and_listening_sockets_survive_the_restore(lam, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    create(lam, "sockets", {"app.py": SOCKETS_APP}, SnapStart=SNAPSTART, Timeout=15)
    _, on_demand = invoke_json(lam, "sockets", {"datagram": "on-demand"})
    assert on_demand.pop("stream")
    assert on_demand == {"init_type": "on-demand", "greeting": "accepted", "datagram": "on-demand", "from_emitter": True}
    publish(lam, "sockets")
    response, body = invoke_json(lam, "sockets", {"datagram": "restored"}, Qualifier="1", LogType="Tail")
    assert "FunctionError" not in response, body
    assert_restored(response["LogResult"])
    first = body.pop("stream")
    assert body == {"init_type": "snap-start", "greeting": "accepted", "datagram": "restored", "from_emitter": True}
    # the same restored environment again: the sockets keep working
    response, body = invoke_json(lam, "sockets", {"datagram": "warm"}, Qualifier="1", LogType="Tail")
    assert_warm(response["LogResult"])
    assert body["datagram"] == "warm" and body["greeting"] == "accepted" and body["stream"] == first, body
    # concurrent restored copies: each has the listener's port and the receiver's in its own namespace
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda i: invoke_json(lam, "sockets", {"datagram": f"copy-{i}", "hold": 1.5},
                                                      Qualifier="1"), range(3)))
    bodies = [body for _, body in results]
    assert sorted(b["datagram"] for b in bodies) == ["copy-0", "copy-1", "copy-2"], bodies
    assert all(b["greeting"] == "accepted" and b["from_emitter"] for b in bodies), bodies
    assert len({b["stream"] for b in bodies}) == 3, bodies
    still_serving(lam, "plain")


@pytest.mark.parametrize(("mode", "expected"), [
    ("reset", {"send_error": "ConnectionResetError", "recv": ""}),
    ("closed", {"send": "ok", "recv": ""}),
    ("blackhole", {"send": "ok", "recv_error": "TimeoutError"}),
])
def test_init_connection_is_broken_per_mode(own_servers: dict[str, ServerHandle], peer: Peer, mode: str,
                                            expected: dict[str, str]) -> None:
    handle = own_servers[mode]
    lam = handle.client()
    variables = {"PEER_HOST": peer.netpeer.ip, "PEER_PORT": str(peer.port)}
    create(lam, "held", {"app.py": CONNECTION_APP}, SnapStart=SNAPSTART, Timeout=15, Environment={"Variables": variables})
    publish(lam, "held")
    warnings = [m for v, _, m in function_log(handle, "held") if v == "1" and m.startswith("WARNING SnapStart")]
    assert any(f"TCP connection to {peer.netpeer.ip}:{peer.port}" in m and f"--snapstart-connections {mode}" in m
               for m in warnings), warnings
    wait_for(lambda: b"init;" in peer.everything(), 30, "the peer to see init's connection and bytes")
    response, body = invoke_json(lam, "held", {"timeout": 2}, Qualifier="1", LogType="Tail")
    assert "FunctionError" not in response, body
    assert_restored(response["LogResult"])
    assert body == expected
    assert all(b"after-restore" not in data for data in peer.everything()), peer.everything()
    still_serving(lam, "plain")



LISTEN_APP = """
import os, socket
LISTENER = socket.socket()
LISTENER.bind(("127.0.0.1", int(os.environ["PORT"])))
LISTENER.listen()
def handler(event, context):
    return "never restored"
"""


def test_host_network_refuses_a_socket_bound_to_a_port(own_servers: dict[str, ServerHandle]) -> None:
    """With --sandbox-network host every restored copy would share the host's ports: the publish
    fails naming the socket (Runtime.SnapshotUnsupportedSocket), and the server keeps serving."""
    lam = own_servers["host-net"].client()
    port = free_port()
    create(lam, "listener", {"app.py": LISTEN_APP}, SnapStart=SNAPSTART, Timeout=15,
           Environment={"Variables": {"PORT": str(port)}})
    _, final = publish(lam, "listener", expect="Failed")
    assert final["StateReasonCode"] == "FunctionError.RuntimeInitError", final
    assert "Runtime.SnapshotUnsupportedSocket" in final["StateReason"], final["StateReason"]
    assert f"listening TCP socket 127.0.0.1:{port}" in final["StateReason"], final["StateReason"]
    still_serving(lam, "plain")
