"""A cluster of real `snapfaas serve` nodes, each in a network namespace of its own.

    host: bridge tcb<id>  10.252.<n>.1/24 (PostgreSQL listens here too)
      ├── veth tc<id>a <==> netns tc<id>-a: eth0 10.252.<n>.11/24   node "a"  http://10.252.<n>.11:9000
      ├── veth tc<id>b <==> netns tc<id>-b: eth0 10.252.<n>.12/24   node "b"
      └── ...

Nodes reach each other over the bridge with their advertise URLs, and the suite's PostgreSQL at
the bridge's address; the test reaches them from the host. Every node has its own data dir and
sandbox dir and shares the store origin (a directory) and the store secret. Processes run in
their namespace through ``nsenter --net`` (the mount namespace stays the host's, so the
fixture sees and removes what they leave). The fixture owns every process, namespace and
interface and removes them all; a node killed by a test is restarted (which removes what the
killed process left) or its containers are deleted at the end.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from snapfaas.config import bundles_for, run_dir_for, snapshot_cache_for
from snapfaas.sandbox.mounts import remove_tree
from tests.reaper import REAPER

if TYPE_CHECKING:
    from tests.conftest import ProcessFactory
    from tests.pgserver import PostgresCluster

NODE_PORT = 9000


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Bridge:
    """The cluster's network: a host bridge and one namespace + veth per node."""

    def __init__(self, count: int) -> None:
        tag = os.getpid() % 10000
        self.n = os.getpid() % 200 + 20
        self.bridge = f"tcb{tag}"
        self.host_ip = f"10.252.{self.n}.1"
        self.names = [f"tc{tag}-{chr(97 + i)}" for i in range(count)]
        self.close()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, name in enumerate(self.names):
            host_if = self._host_if(i)
            _ip("netns", "add", name)
            _ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("link", "set", host_if, "master", self.bridge)
            _ip("link", "set", host_if, "up")
            _ip("-n", name, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", name, "route", "add", "default", "via", self.host_ip)

    def _host_if(self, index: int) -> str:
        return f"{self.bridge}{chr(97 + index)}"

    def address(self, index: int) -> str:
        return f"10.252.{self.n}.{11 + index}"

    def close(self) -> None:
        for i, name in enumerate(self.names):
            subprocess.run(["ip", "link", "delete", self._host_if(i)], capture_output=True)
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)


@dataclasses.dataclass
class Node:
    """One node: a `ServerHandle` whose process runs in the node's namespace."""

    handle: "ServerHandleLike"
    node_id: str
    netns: str
    address: str
    sandbox: Path
    killed: bool = False

    @property
    def endpoint(self) -> str:
        return self.handle.endpoint

    def client(self, **config: object):  # type: ignore[no-untyped-def]
        return self.handle.client(**config)

    def kill(self) -> None:
        """kill -9: no shutdown, its row stays until its heartbeat expires."""
        assert self.handle.proc is not None
        self.handle.proc.send_signal(signal.SIGKILL)
        self.handle.proc.wait()
        self.killed = True

    def start(self) -> None:
        self.handle.start()
        self.killed = False

    def stop(self) -> int:
        return self.handle.stop()


class ServerHandleLike:  # the attributes of tests.conftest.ServerHandle this module uses (typing only)
    endpoint: str
    proc: subprocess.Popen[bytes] | None

    def start(self) -> None: ...
    def stop(self, sig: int = signal.SIGTERM) -> int: ...
    def client(self, **config: object): ...  # type: ignore[no-untyped-def]
    def runc_containers(self) -> list[str]: ...


@dataclasses.dataclass
class Cluster:
    nodes: list[Node]
    registry_url: str  # as the nodes reach it (the bridge's address)
    origin: Path
    secret_file: Path  # the store secret every node shares
    network: Bridge

    def __getitem__(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    @property
    def ids(self) -> list[str]:
        return [n.node_id for n in self.nodes]


def run_cluster(processes: "ProcessFactory", postgres: "PostgresCluster", base: Path, count: int,
                extra_args: list[str] | None = None) -> Iterator[Cluster]:
    """Start `count` nodes (ids a, b, c, ...) and yield the `Cluster`; stop them, check that no
    container survived, and remove every directory, namespace and interface."""
    from tests.conftest import WIDE_SNAPSTART_RUNTIMES

    handle_class = _namespaced_handle_class()
    network = Bridge(count)
    database = f"cluster_{base.name.replace('-', '_')}_{os.getpid()}"[:60]
    registry = postgres.create_database(database)
    registry = postgres.url(registry.rsplit("/", 1)[-1], host=network.host_ip)
    origin = base / "origin"
    secret_file = base / "store.secret"
    secret_file.write_bytes(secrets.token_bytes(32))
    secret_file.chmod(0o600)
    nodes: list[Node] = []
    try:
        for i, netns in enumerate(network.names):
            node_id = chr(97 + i)
            sandbox = Path(f"/var/lib/snapfaas/test/{base.name}-{os.getpid()}-{node_id}")
            address = network.address(i)
            args = ["--host", "0.0.0.0", "--node-id", node_id, "--advertise-url", f"http://{address}:{NODE_PORT}",
                    "--registry", registry, "--store-origin", str(origin), "--store-secret-file", str(secret_file),
                    "--keep-alive", "60", "--sandbox-dir", str(sandbox), *WIDE_SNAPSTART_RUNTIMES, *(extra_args or [])]
            handle = handle_class(processes, base / node_id / "data", NODE_PORT, args)
            handle.netns, handle.address = netns, address
            (base / node_id).mkdir()
            nodes.append(Node(handle, node_id, netns, address, sandbox))  # type: ignore[arg-type]
        _on_every_node(nodes, Node.start)  # together, as a cluster's nodes may start (schema work is locked)
        yield Cluster(nodes, registry, origin, secret_file, network)
        _on_every_node(nodes, _stop_checked)
    finally:
        for node in nodes:
            proc = node.handle.proc
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            _delete_containers(node)
            REAPER.retire(node.sandbox)
            remove_tree(bundles_for(node.sandbox))
            shutil.rmtree(snapshot_cache_for(node.sandbox), ignore_errors=True)
            remove_tree(run_dir_for(node.sandbox))
        network.close()


def _on_every_node(nodes: list[Node], step: Callable[[Node], object]) -> None:
    """Run `step` for every node at once (one thread each); the first failure is raised."""
    with concurrent.futures.ThreadPoolExecutor(max(1, len(nodes))) as pool:
        for future in [pool.submit(step, node) for node in nodes]:
            future.result()


def _stop_checked(node: Node) -> None:
    """Stop `node` (started again first if a test killed it: that reaps what it left) and check
    that none of its containers survived."""
    if node.killed:
        node.start()
    node.stop()
    assert node.handle.runc_containers() == [], f"containers of node {node.node_id} survived its shutdown"


def _delete_containers(node: Node) -> None:
    """Force-delete the containers a node left (after a failed test)."""
    try:
        leftovers = node.handle.runc_containers()
    except RuntimeError:
        return
    for container in leftovers:
        subprocess.run(["runc", "--root", str(node.handle.data_dir / "runc"), "delete", "--force", container],  # type: ignore[attr-defined]
                       capture_output=True)


def _namespaced_handle_class():  # type: ignore[no-untyped-def]
    """Built on use: tests.conftest imports this module."""
    from tests.conftest import ServerHandle

    class NamespacedHandle(ServerHandle):
        """A `ServerHandle` whose server runs in a network namespace and is reached at its address."""

        netns: str = ""
        address: str = ""

        @property
        def endpoint(self) -> str:
            return f"http://{self.address}:{self.port}"

        def command(self) -> list[str]:
            return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *super().command()]

    return NamespacedHandle


def wait_for(condition, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `condition()` until it returns a truthy value (returned) or `timeout` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
