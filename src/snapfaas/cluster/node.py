"""`ClusterNode`: what the API and the server use of cluster mode.

* `node_id`, `membership` (`Membership` or `SingleNode`: ``live_nodes()``, ``nodes()``) for
  other subsystems (publish claims, the event queue, GC leases).
* `route(key)`: the node that should run an invoke of version key `key`
  (``<function ARN>:<version>``), or None to run it here. Always None for a single node.
* `forward(...)`: send an invoke to the chosen node; a peer that cannot be reached is marked
  suspect and the invoke is routed again without it (it never reached the peer); a connection
  that breaks mid-invoke marks the peer suspect and answers ``ServiceException``.
* `verify_forwarded(...)`: the target side: a valid cluster signature from a live node.
* `start()` / `leave()` / `close()`: the heartbeat task (its database work in a thread of its
  own, never on the event loop), the row deleted at shutdown, the client closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import uuid
from collections.abc import Callable

from snapfaas.cluster import routing
from snapfaas.cluster.forwarding import Answer, Forwarder, NotConnected
from snapfaas.cluster.membership import Membership, SingleNode
from snapfaas.cluster.nodes import HEARTBEAT_S, NodeLoad
from snapfaas.cluster.signing import Assertion, ClusterSigner
from snapfaas.errors import InvalidSignature, ServiceError, SnapfaasError
from snapfaas.principals import Principal

logger = logging.getLogger(__name__)
NODE_HEADER = "X-Snapfaas-Node"  # on every invoke answer: the node that ran it
MAX_ATTEMPTS = 3  # peers tried for one invoke when they cannot be reached


class ClusterNode:
    def __init__(self, membership: Membership | SingleNode, load: Callable[[], NodeLoad],
                 signer: ClusterSigner | None = None) -> None:
        self.membership = membership
        self.node_id = membership.node_id
        self.load = load
        self.signer = signer
        self.forwarder = Forwarder()
        self._beats: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._last_warning = 0.0

    @property
    def clustered(self) -> bool:
        return isinstance(self.membership, Membership)

    # -- routing ----------------------------------------------------------------------------
    def route(self, key: str) -> routing.Route | None:
        """Where an invoke of `key` runs: None means here."""
        if not self.clustered:
            return None
        chosen = routing.choose(self.membership.live_nodes(), key, self.node_id, self.forwarder.pending)
        if chosen is None or chosen.local:
            return None
        return chosen

    async def forward(self, key: str, route: routing.Route, path_qs: str, body: bytes, headers: dict[str, str],
                      principal: Principal | None) -> Answer | None:
        """Run the invoke on `route`'s node; None when no peer could be reached and the invoke
        should run here (every peer tried is suspect by then)."""
        assert self.signer is not None
        request_id = str(uuid.uuid4())
        current: routing.Route | None = route
        for _ in range(MAX_ATTEMPTS):
            if current is None:
                return None
            node = current.node
            signed = self.signer.sign("POST", path_qs, body, principal, request_id, node.node_id)
            try:
                return await self.forwarder.send(node.node_id, node.url, path_qs, body, {**headers, **signed})
            except NotConnected as exc:
                logger.warning("%s; routing the invoke again", exc)
                self.membership.suspect(node.node_id)
            except ServiceError:
                self.membership.suspect(node.node_id)
                raise
            current = self.route(key)
        return None

    # -- the target side --------------------------------------------------------------------
    def precheck_forwarded(self, headers) -> None:  # type: ignore[no-untyped-def]
        """Before a forwarded body is read: a cluster node, the signature's headers present,
        made for this node, within the window."""
        if self.signer is None:
            raise InvalidSignature("forwarded request refused at step 'cluster': this server is not a cluster node")
        self.signer.precheck(headers)

    async def verify_forwarded(self, method: str, path_qs: str, body_sha256: str, headers) -> Assertion:  # type: ignore[no-untyped-def]
        """The assertion of a forwarded request: valid signature, sent by a live node."""
        if self.signer is None:
            raise InvalidSignature("forwarded request refused at step 'cluster': this server is not a cluster node")
        assertion = self.signer.verify(method, path_qs, body_sha256, headers)
        if not self.membership.is_live(assertion.sender):
            await self._in_thread(self.membership.refresh)  # a node that just joined: look again once
            if not self.membership.is_live(assertion.sender):
                raise InvalidSignature(f"forwarded request refused at step 'sender': node {assertion.sender!r} is not "
                                       "a live node of this cluster")
        return assertion

    # -- lifecycle --------------------------------------------------------------------------
    async def _in_thread(self, fn: Callable[..., object], *args: object) -> object:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cluster-heartbeat")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def join(self, store_secret: bytes) -> None:
        """Join the cluster (tables, secrets, first heartbeat); a single node has nothing to do."""
        if isinstance(self.membership, Membership):
            await self._in_thread(self.membership.join, store_secret)
            self.signer = ClusterSigner(self.membership.cluster_key, self.node_id)

    async def start(self) -> None:
        """The first heartbeat (this node becomes live: call it once the API listens), then one
        every `HEARTBEAT_S` in the background."""
        if isinstance(self.membership, Membership):
            await self._beat()
            self._beats = asyncio.create_task(self._heartbeats(), name="cluster-heartbeat")

    async def _beat(self) -> None:
        assert isinstance(self.membership, Membership)
        try:
            await self._in_thread(self.membership.beat, self.load())
        except SnapfaasError as exc:  # the database is away: keep serving, beat again next second
            now = time.monotonic()
            if now - self._last_warning > 30:
                logger.warning("cluster heartbeat failed (repeats are not logged for 30 s): %s", exc.message)
                self._last_warning = now

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await self._beat()

    async def leave(self) -> None:
        """Stop the heartbeats and delete this node's row (the others stop routing here)."""
        if self._beats is not None:
            self._beats.cancel()
            await asyncio.gather(self._beats, return_exceptions=True)
            self._beats = None
        if isinstance(self.membership, Membership):
            try:
                await self._in_thread(self.membership.leave)
            except SnapfaasError as exc:  # its heartbeat expires instead
                logger.warning("could not delete this node's row at shutdown: %s", exc.message)

    async def close(self) -> None:
        await self.forwarder.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
