"""The dispatcher's I/O loop (snapfaas.worker.events.EventQueue) with a real SQLite store and a
scripted runner: attempts run concurrently up to the capacity, a throttled function does not
hold a slot or block another function, and finished events leave the store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from snapfaas.worker.backlog import Backlog, EventTiming, Outcome, QueuedEvent, RetryPolicy, Verdict
from snapfaas.worker.events import Attempt, EventQueue, EventStore, Finished


def test_concurrency_up_to_capacity_and_no_head_of_line_blocking(tmp_path: Path) -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        running: list[str] = []
        peak = 0
        finished: list[Finished] = []
        throttled_a = 0

        async def run(event: QueuedEvent) -> Attempt:
            nonlocal peak, throttled_a
            if event.function == "throttled" and not release.is_set():
                throttled_a += 1
                return Attempt(Outcome.THROTTLED, "reserved concurrency 0")
            running.append(event.request_id)
            peak = max(peak, len(running))
            await release.wait()
            running.remove(event.request_id)
            return Attempt(Outcome.SUCCESS, "", "$LATEST", None, b"{}")

        async def conclude(done: Finished) -> None:
            finished.append(done)

        store = EventStore(tmp_path / "events.db")
        backlog = Backlog(EventTiming(0.01), lambda f, q: RetryPolicy())
        queue = EventQueue(store, backlog, run, conclude, capacity=lambda: 2)
        await queue.start()
        for i in range(3):
            await queue.put(f"t{i}", "throttled", None, b"{}")
        for i in range(3):
            await queue.put(f"s{i}", "slow", None, b"{}")
        async with asyncio.timeout(30):
            while len(running) < 2 or throttled_a < 1:
                await asyncio.sleep(0.01)  # polling the scripted runner's state
        assert peak == 2 and all(r.startswith("s") for r in running)  # throttles never took a slot
        release.set()
        queue.changed("throttled", lambda q: True)  # e.g. concurrency restored: gates open now
        async with asyncio.timeout(30):
            while len(finished) < 6:
                await asyncio.sleep(0.01)
        assert sorted(f.event.request_id for f in finished) == ["s0", "s1", "s2", "t0", "t1", "t2"]
        assert all(f.decision.verdict is Verdict.DONE for f in finished)
        async with asyncio.timeout(30):
            while store.count() or len(queue):
                await asyncio.sleep(0.01)  # the last delete runs on a database thread
        await queue.close()

    asyncio.run(scenario())


def test_stored_events_are_loaded_and_a_deleted_target_is_dropped(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = EventStore(tmp_path / "events.db")
        store.insert("r1", "gone", "7", b"{}", time.time())
        store.insert("r2", "kept", None, b"{}", time.time())
        finished: list[Finished] = []
        never = asyncio.Event()

        async def run(event: QueuedEvent) -> Attempt:
            return Attempt(Outcome.NOT_READY, "Pending")

        async def conclude(done: Finished) -> None:
            finished.append(done)
            never.set()

        queue = EventQueue(store, Backlog(EventTiming(10.0), lambda f, q: RetryPolicy()), run, conclude,
                           capacity=lambda: 4)
        await queue.start()
        assert len(queue) == 2
        gone = queue.changed("gone", lambda qualifier: qualifier != "7")
        assert [e.request_id for e in gone] == ["r1"]
        async with asyncio.timeout(30):
            await never.wait()
        [dropped] = finished
        assert dropped.event.request_id == "r1" and dropped.decision.reason is not None
        assert dropped.decision.reason.value == "FunctionDeleted"
        async with asyncio.timeout(30):
            while store.count() != 1:
                await asyncio.sleep(0.01)
        await queue.close()

    asyncio.run(scenario())
