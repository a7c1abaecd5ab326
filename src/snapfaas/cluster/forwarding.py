"""Sending a synchronous invoke to the node that should run it, and its answer back unchanged.

One aiohttp `ClientSession` (keep-alive connections per peer, reused) for the node's life.
`Forwarder.send` signs the request with the cluster key (`signing`), posts it to the target's
internal route and returns the target's status, pass-through headers and body. Failures:

* the connection cannot be made (refused, unreachable, connect timeout): `NotConnected`; the
  request never reached the target, so the caller may run it elsewhere;
* the connection breaks after the request was sent (the target died mid-invoke, reset,
  disconnected): `ServiceError` (Lambda's ``ServiceException``, HTTP 500, retryable by the
  client), since the function may have run.

Both mark the target suspect (the caller does, through `membership.suspect`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging

import aiohttp
from yarl import URL

from snapfaas.errors import ServiceError

logger = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 3.0
KEEPALIVE_S = 30.0  # below the peers' --client-idle-timeout (60 s): we close idle connections first
INTERNAL_PREFIX = "/snapfaas/v1/cluster/functions/"
PASSED_HEADERS = ("x-amzn-RequestId", "X-Amz-Executed-Version", "X-Amz-Function-Error", "X-Amz-Log-Result",
                  "x-amzn-ErrorType", "Content-Type", "X-Snapfaas-Node")


class NotConnected(Exception):
    """The target could not be reached: the request was not sent."""

    def __init__(self, node_id: str, detail: str) -> None:
        super().__init__(f"node {node_id} could not be reached: {detail}")
        self.node_id = node_id


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def internal_path(public_path_qs: str) -> str:
    """The target's internal route for a public invoke path (raw, query included)."""
    prefix = "/2015-03-31/functions/"
    if not public_path_qs.startswith(prefix):
        raise ValueError(f"not an invoke path: {public_path_qs!r}")
    return INTERNAL_PREFIX + public_path_qs[len(prefix):]


class Forwarder:
    """The node's HTTP client to its peers (create and close it on the event loop)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self.pending: collections.Counter[str] = collections.Counter()  # node id -> forwards in flight

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                                  skip_auto_headers=("User-Agent", "Content-Type"))
        return self._session

    async def send(self, node_id: str, base_url: str, path_qs: str, body: bytes, headers: dict[str, str]) -> Answer:
        """POST to `base_url` + `path_qs` (already encoded); see the module docstring for failures."""
        url = URL(base_url + path_qs, encoded=True)
        self.pending[node_id] += 1
        try:
            async with self._client().post(url, data=body, headers=headers) as response:
                payload = await response.read()
                passed = {h: response.headers[h] for h in PASSED_HEADERS if h in response.headers}
                return Answer(response.status, passed, payload)
        except aiohttp.ClientConnectorError as exc:
            raise NotConnected(node_id, str(exc)) from exc
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            logger.warning("forward to node %s (%s) failed: %r", node_id, base_url, exc)
            raise ServiceError(f"invoke failed at step 'forward': the connection to node {node_id} broke before it "
                               f"answered ({type(exc).__name__}); the invoke may or may not have run") from exc
        finally:
            self.pending[node_id] -= 1
            if self.pending[node_id] <= 0:
                del self.pending[node_id]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
