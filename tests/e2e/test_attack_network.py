"""Attacker suite, network: a function owns a network namespace and reaches nothing but the
outside world through NAT.

Every escape is tried from inside a real function and must fail while the platform keeps
serving; each blocked target is first shown to be really there (reachable from the host), so
the failure is the platform's doing. Targets are the suite's own: the daemon's port, the
host side of the environment's link, a peer namespace serving 169.254.169.254 (never a real
metadata endpoint), another environment, a host abstract Unix socket.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import socket
import threading
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

from tests.conftest import ServerHandle, create, invoke_json
from tests.e2e.snapstart_support import QuietHandler
from tests.netpeer import METADATA_IP, NetPeer

PROBE = r'''
import json, os, socket, time, urllib.request

def connect(host, port, timeout=2.0, family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port) if family == socket.AF_INET else host)
        return "connected"
    except OSError as exc:
        return type(exc).__name__
    finally:
        s.close()

def fetch(url, timeout=3.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return ["ok", r.read().decode()]
    except Exception as exc:
        return ["error", type(exc).__name__]

def gateway():
    for line in open("/proc/net/route").read().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            raw = bytes.fromhex(fields[2])[::-1]
            return socket.inet_ntoa(raw)

def own_address():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((gateway(), 9))
    try:
        return s.getsockname()[0]
    finally:
        s.close()

def handler(event, context):
    op = event["op"]
    if op == "connect":
        return connect(event["host"], event["port"], event.get("timeout", 2.0))
    if op == "fetch":
        return fetch(event["url"])
    if op == "gateway":
        return {"gateway": gateway(), "address": own_address()}
    if op == "abstract":
        return connect("\0" + event["name"], 0, family=socket.AF_UNIX)
    if op == "listen":
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", event["port"]))
        srv.listen(1)
        srv.settimeout(event["wait"])
        address = own_address()
        self_check = connect(address, event["port"])  # the listener is really up
        accepted = []
        try:
            while True:
                conn, peer = srv.accept()
                accepted.append(peer[0])
                conn.close()
        except OSError:
            pass
        finally:
            srv.close()
        return {"address": address, "self_check": self_check, "accepted_from_others": [a for a in accepted if a != address]}
    if op == "squat":
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", event["port"]))
        s.listen(1)
        s.close()
        return "bound"
    if op == "interfaces":
        return sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:])
    raise ValueError(op)
'''


class Hello(QuietHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        # /whoami: the source address the peer sees (the host's, if the environment's was NATed)
        self.answer(self.client_address[0].encode() if self.path == "/whoami" else b"hello from the peer")


@contextlib.contextmanager
def serving(sock: socket.socket) -> Iterator[int]:
    """Serve `Hello` on `sock` (bound in a peer namespace) while the block runs; yields its port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hello, bind_and_activate=False)
    httpd.socket.close()
    httpd.socket = sock
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield sock.getsockname()[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def metadata_peer() -> Iterator[NetPeer]:
    """A peer namespace holding 169.254.169.254, routed from the host (the suite's own)."""
    peer = NetPeer("m", metadata=True)
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def probe(lam) -> str:  # type: ignore[no-untyped-def]
    create(lam, "netprobe", {"app.py": PROBE}, Timeout=30)
    return "netprobe"


def run(lam, name: str, event: dict) -> object:  # type: ignore[no-untyped-def]
    response, body = invoke_json(lam, name, event)
    assert "FunctionError" not in response, body
    return body


def test_outbound_traffic_to_a_peer_goes_through_nat(lam, probe: str, netpeer: NetPeer) -> None:  # type: ignore[no-untyped-def]
    own = run(lam, probe, {"op": "gateway"})["address"]  # type: ignore[index]
    with serving(netpeer.listen()) as port:
        assert run(lam, probe, {"op": "fetch", "url": f"http://{netpeer.ip}:{port}/"}) == ["ok", "hello from the peer"]
        # the peer routes back to the host (its default route), so the environment's own address
        # would work too: the connection comes from the host's address only because of the NAT
        seen = run(lam, probe, {"op": "fetch", "url": f"http://{netpeer.ip}:{port}/whoami"})
    assert seen == ["ok", netpeer.host_ip] and own != netpeer.host_ip, (seen, own)


def test_only_loopback_and_its_own_link(lam, probe: str) -> None:  # type: ignore[no-untyped-def]
    assert run(lam, probe, {"op": "interfaces"}) == ["eth0", "lo"]


def test_api_port_on_loopback_is_not_the_hosts(lam, probe: str, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", server.port), timeout=2):
        pass  # the daemon listens there on the host
    assert run(lam, probe, {"op": "connect", "host": "127.0.0.1", "port": server.port}) == "ConnectionRefusedError"


def test_host_side_of_the_link_and_host_addresses_are_unreachable(lam, probe: str, netpeer: NetPeer) -> None:  # type: ignore[no-untyped-def]
    """A host service listening on every address (as the API does when bound to 0.0.0.0):
    reachable from the host on the environment link's host side and on the host's other
    addresses, and from a function on neither."""
    gateway = run(lam, probe, {"op": "gateway"})["gateway"]  # type: ignore[index]
    listener = socket.create_server(("0.0.0.0", 0))
    port = listener.getsockname()[1]
    try:
        for address in (gateway, netpeer.host_ip):
            with socket.create_connection((address, port), timeout=2):
                pass  # really there
        for address in (gateway, netpeer.host_ip):
            assert run(lam, probe, {"op": "connect", "host": address, "port": port}) in ("TimeoutError", "ConnectionRefusedError"), address
    finally:
        listener.close()


def test_link_local_metadata_address_is_blocked(lam, probe: str, metadata_peer: NetPeer) -> None:  # type: ignore[no-untyped-def]
    with serving(metadata_peer.listen(port=80, address=METADATA_IP)):
        with urllib.request.urlopen(f"http://{METADATA_IP}/latest/meta-data/", timeout=3) as r:
            assert r.read() == b"hello from the peer"  # reachable from the host: the route is real
        outcome = run(lam, probe, {"op": "fetch", "url": f"http://{METADATA_IP}/latest/meta-data/"})
        assert outcome[0] == "error", outcome  # type: ignore[index]
        # while the same peer's ordinary address is reachable (the block is for link-local only)
        with serving(metadata_peer.listen()) as port:
            assert run(lam, probe, {"op": "fetch", "url": f"http://{metadata_peer.ip}:{port}/"}) == ["ok", "hello from the peer"]


def test_other_environments_are_unreachable(lam, probe: str) -> None:  # type: ignore[no-untyped-def]
    """An environment holds a listener open on its own address (which answers itself); an
    environment of another function keeps trying to connect to it and never gets through."""
    create(lam, "netprobe-other", {"app.py": PROBE}, Timeout=30)
    address = run(lam, probe, {"op": "gateway"})["address"]  # type: ignore[index]  # the (now idle) environment
    port = 8089
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        listening = pool.submit(run, lam, probe, {"op": "listen", "port": port, "wait": 8})  # reuses that environment
        outcomes = [run(lam, "netprobe-other", {"op": "connect", "host": address, "port": port, "timeout": 1.0})
                    for _ in range(4)]
        result = listening.result()
    assert result["address"] == address and result["self_check"] == "connected", result  # type: ignore[index]
    assert result["accepted_from_others"] == [], result  # type: ignore[index]
    assert "connected" not in outcomes, outcomes


def test_host_abstract_unix_sockets_are_out_of_reach(lam, probe: str) -> None:  # type: ignore[no-untyped-def]
    name = f"snapfaas-test-{os.getpid()}"
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    holder.bind("\0" + name)
    holder.listen(1)
    try:
        probe_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe_sock.connect("\0" + name)  # really there on the host
        probe_sock.close()
        assert run(lam, probe, {"op": "abstract", "name": name}) == "ConnectionRefusedError"
    finally:
        holder.close()


def test_squatting_a_port_stays_inside_the_environment(lam, probe: str, server: ServerHandle) -> None:  # type: ignore[no-untyped-def]
    assert run(lam, probe, {"op": "squat", "port": server.port}) == "bound"
    with urllib.request.urlopen(server.endpoint + "/snapfaas/v1/health", timeout=5) as r:
        assert json.load(r) == {"status": "ok"}  # the host's port is still the daemon's
