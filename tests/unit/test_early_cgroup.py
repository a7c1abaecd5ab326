"""worker.factory.EarlyCgroup: a restored environment's cgroup made from the restore's decision."""

from __future__ import annotations

import asyncio

import pytest

from snapfaas.sandbox.cgroup import Limits
from snapfaas.worker import factory


def test_an_untaken_cgroup_is_removed_once_made(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    monkeypatch.setattr(factory, "remove_cgroup", lambda cgroup: events.append(f"removed {cgroup}") or [])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        made: asyncio.Future[None] = loop.create_future()
        early = factory.EarlyCgroup("e1", "/snapfaas/k/e1", Limits(1, 1, 1), made)
        discarding = asyncio.ensure_future(early.discard())
        await asyncio.sleep(0)  # the discard waits for the thread that makes it
        assert events == []
        events.append("made")
        made.set_result(None)
        await discarding
        await early.discard()  # idempotent

    asyncio.run(main())
    assert events == ["made", "removed /snapfaas/k/e1"]


def test_a_taken_or_failed_cgroup(monkeypatch: pytest.MonkeyPatch) -> None:
    removed: list[str] = []
    monkeypatch.setattr(factory, "remove_cgroup", lambda cgroup: removed.append(cgroup) or [])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        taken = factory.EarlyCgroup("e1", "/snapfaas/k/e1", Limits(1, 1, 1), loop.create_future(), taken=True)
        await taken.discard()  # its environment owns it
        failed: asyncio.Future[None] = loop.create_future()
        failed.set_exception(OSError("mkdir failed"))
        await factory.EarlyCgroup("e2", "/snapfaas/k/e2", Limits(1, 1, 1), failed).discard()

    asyncio.run(main())
    assert removed == ["/snapfaas/k/e2"]  # whatever part of it was made
