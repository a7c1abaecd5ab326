"""Refill policy of the network namespace pool (snapfaas.sandbox.network.NetworkPool): no I/O,
`_prepare_next` replaced by a recorder."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from snapfaas.sandbox.network import LOW_WATER, NetworkPool, PreparedNet, plan


class RecordingPool(NetworkPool):
    def __init__(self, ready_target: int) -> None:
        super().__init__(Path("/nonexistent"), ready_target)
        self.made = 0
        self.claim.block = 0

    def _prepare_next(self) -> PreparedNet:
        self.made += 1
        return PreparedNet(plan(0, self.made), socket.socket())

    def _remove(self, net: PreparedNet) -> None:
        net.listener.close()


async def settle() -> None:
    for _ in range(50):  # let the filler's thread hops run
        await asyncio.sleep(0)
        await asyncio.to_thread(lambda: None)


def test_refills_wait_until_no_environment_is_starting() -> None:
    async def scenario() -> None:
        pool = RecordingPool(ready_target=6)
        pool.start()
        await settle()
        assert len(pool._ready) == 6
        nets = [await pool.acquire() for _ in range(3)]  # three environments starting
        await settle()
        assert len(pool._ready) == 3  # above the low-water mark: nothing prepared meanwhile
        for net in nets:
            pool.started()
        await settle()
        assert len(pool._ready) == 6  # refilled once they run
        for net in nets:
            pool.release(net)
        pool._closing = True
        pool._filler.cancel()  # type: ignore[union-attr]
        for net in pool._ready:
            net.listener.close()

    asyncio.run(scenario())


def test_below_the_low_water_mark_refills_at_once() -> None:
    async def scenario() -> None:
        pool = RecordingPool(ready_target=LOW_WATER + 1)
        pool.start()
        await settle()
        nets = [await pool.acquire() for _ in range(LOW_WATER + 1)]  # drained, all still starting
        await settle()
        assert len(pool._ready) >= LOW_WATER  # a burst would otherwise find none
        pool._closing = True
        pool._filler.cancel()  # type: ignore[union-attr]
        for net in [*nets, *pool._ready]:
            net.listener.close()

    asyncio.run(scenario())
