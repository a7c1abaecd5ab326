"""The daemon's endpoints inside execution environments.

Each environment's network namespace holds one listening socket the daemon opened there
(127.0.0.1:9001, see `sandbox.network`). `EnvironmentSites` serves the environment-facing
application on it: the container-credentials endpoint and the Lambda API, always behind SigV4
(even with ``--no-auth``, which only concerns the operator's port), so a function's requests are
authorized as its environment's principal. The runner is a `snapfaas.api.connections.GuardedRunner`,
so these listeners have the same header, body and idle timeouts as the operator's port.
"""

from __future__ import annotations

import socket

from aiohttp import web


class EnvironmentSites:
    """Opens and closes one aiohttp site per environment listener on a shared runner."""

    def __init__(self, runner: web.AppRunner) -> None:
        """`runner`: the environment-facing application's (a `GuardedRunner` in the daemon)."""
        self.runner = runner

    async def open(self, listener: socket.socket) -> web.SockSite:
        site = web.SockSite(self.runner, listener, shutdown_timeout=0.1)
        await site.start()
        return site

    async def close(self, handle: web.SockSite) -> None:
        await handle.stop()
