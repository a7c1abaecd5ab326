"""Client connections: how long a client may take to send a request head, and to stay idle.

aiohttp bounds an idle keep-alive connection (``keepalive_timeout``) but not the time a client
takes to send a request's head once it has started: a client trickling one header line a
second holds its connection (and a handler slot) indefinitely. `GuardedRequestHandler` adds a
head clock to aiohttp's `RequestHandler`. Each connection is in one of three states:

- ``idle``: waiting for the first byte of a request head; closed after `ClientTimeouts.idle_s`
  (aiohttp's keep-alive timer, which also runs from the connection's start);
- ``head``: some bytes of a head arrived, the head is not complete; closed (one log line) when
  it is still incomplete `ClientTimeouts.header_s` after its first byte;
- ``request``: the head is complete; the body is read by `snapfaas.api.bodies` under its own
  idle timeout (`ClientTimeouts.body_s` between chunks), the response is written, and once the
  request's body has ended the next byte starts a new head. (Whether bytes belong to a body is
  decided before they are parsed: a segment that ends one body and starts a pipelined head is
  not timed as a head; the idle timer still bounds it.)

`GuardedRunner` is an `aiohttp.web.AppRunner` whose connections are such handlers; the public
API and every environment listener (`snapfaas.api.sites`) are served through one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ClientTimeouts:
    """Bounds on slow clients, in seconds (`ServerConfig.client_*_timeout_s`)."""

    header_s: float = 10.0  # first byte of a request head -> the whole head
    body_s: float = 20.0  # longest wait for the next chunk of a request body
    idle_s: float = 60.0  # an idle keep-alive connection (no request in progress)

    def __post_init__(self) -> None:
        for name in ("header_s", "body_s", "idle_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"client timeout {name} must be positive, got {getattr(self, name)!r}")


def address(peername: object) -> str:
    """``host:port`` of a socket's peer name (``unknown`` without one)."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        return f"{peername[0]}:{peername[1]}"
    return str(peername) if peername else "unknown"


def peer_of(protocol: RequestHandler) -> str:
    """The client of a connection, also after it is gone (`GuardedRequestHandler` keeps it)."""
    return getattr(protocol, "peer", None) or address(protocol.peername)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol plus the head clock (see the module docstring)."""

    def __init__(self, manager: Server, *, timeouts: ClientTimeouts, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.timeouts = timeouts
        self._head_clock: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._body: StreamReader | None = None  # the body of the newest request head parsed
        self.peer = "unknown"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer = address(transport.get_extra_info("peername"))
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        between_requests = self._body is None or self._body.is_eof()  # decided before these bytes are parsed
        super().data_received(data)
        if self._request_count != heads:  # one or more heads completed
            self._stop_head_clock()
            self._body = self._messages[-1][1] if self._messages else None
        elif data and between_requests:  # bytes of a new head (a body's last bytes are not)
            self._head_bytes += len(data)
            if self._head_clock is None and self.transport is not None:
                self._head_clock = self._loop.call_later(self.timeouts.header_s, self._head_timed_out)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def _stop_head_clock(self) -> None:
        if self._head_clock is not None:
            self._head_clock.cancel()
            self._head_clock = None
        self._head_bytes = 0

    def _head_timed_out(self) -> None:
        self._head_clock = None
        logger.warning("closed connection from %s: request head incomplete after %g s (%d bytes received)",
                       self.peer, self.timeouts.header_s, self._head_bytes)
        self._head_bytes = 0
        self.force_close()


class GuardedServer(Server):
    """aiohttp's low-level server, making `GuardedRequestHandler` connections."""

    def __init__(self, base: Server, timeouts: ClientTimeouts) -> None:
        super().__init__(base.request_handler, request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation, loop=base._loop, **base._kwargs)
        self.timeouts = timeouts

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, timeouts=self.timeouts, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An `AppRunner` whose connections carry `timeouts`: the head clock, aiohttp's keep-alive
    timer set to `ClientTimeouts.idle_s`, and the unread body of a refused request drained for
    at most `ClientTimeouts.body_s` before the connection is closed."""

    def __init__(self, app: web.Application, timeouts: ClientTimeouts, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=timeouts.idle_s, lingering_time=timeouts.body_s, **kwargs)
        self.timeouts = timeouts

    async def _make_server(self) -> Server:
        return GuardedServer(await super()._make_server(), self.timeouts)
