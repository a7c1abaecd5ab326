"""``GET /snapfaas/v1/logs/{name}``: a function's execution log (what CloudWatch Logs holds on
Lambda), as `snapfaas logs` and the dashboard read it.

Query parameters (all optional):

* ``limit=N``: the last N selected lines (default: all).
* ``since=<30s|10m|2h|1d|ISO 8601>``: lines stamped at or after that time.
* ``version=V``: lines of environments of version V (``$LATEST``, ``3``).
* ``request_id=ID``: the lines of one invocation (START to REPORT in its environment's stream).
* ``follow=1``: after the selected lines, keep the response open and send every new matching
  line once it is written (chunked ``text/plain``), until the client goes away or the server
  stops. A follower slower than the log loses lines (a ``[snapfaas] N log lines skipped`` line
  says how many) rather than make the server buffer without bound.

Lines are ``<stamp> TAB <log stream> TAB <message>``; a message spanning lines keeps them as ``\\r``.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from snapfaas.api.context import services
from snapfaas.errors import InvalidParameterValue
from snapfaas.worker.log_filter import LogFilter, parse_since

FOLLOW_BACKLOG = 1024  # batches a follower may lag behind before lines are skipped
CLOSED_CHECK_S = 5.0  # how often an idle follow checks that its client is still there
STOPPING = web.AppKey("log_followers_stopping", asyncio.Event)


def _filter(request: web.Request) -> tuple[LogFilter, int]:
    query = request.query
    try:
        limit = int(query.get("limit") or 0)
        if limit < 0:
            raise ValueError
    except ValueError:
        raise InvalidParameterValue(f"limit {query.get('limit')!r}: expected a whole number >= 0") from None
    since = None
    if query.get("since"):
        try:
            since = parse_since(query["since"], time.time())
        except ValueError as exc:
            raise InvalidParameterValue(str(exc)) from None
    return LogFilter(since, query.get("version") or None, query.get("request_id") or None), limit


def _text(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


async def function_logs(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    name = request.match_info["name"]
    svc.registry.function_info(name)  # NotFound for an unknown function
    selection, limit = _filter(request)
    unfiltered = selection == LogFilter()
    if request.query.get("follow") not in ("1", "true"):
        lines = await asyncio.to_thread(svc.logs.read, name, limit if unfiltered else None)
        selected = selection.select(lines)
        return web.Response(body=_text(selected[-limit:] if limit else selected), content_type="text/plain", charset="utf-8")
    return await _follow(request, name, selection, limit if unfiltered else None, limit)


async def _follow(request: web.Request, name: str, selection: LogFilter, read_limit: int | None, limit: int) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    batches: asyncio.Queue[list[str] | None] = asyncio.Queue(FOLLOW_BACKLOG)
    skipped = 0

    def put(batch: list[str] | None) -> None:  # on the loop
        nonlocal skipped
        if batch is not None and batches.full():
            skipped += len(batch)
            return
        if batch is None and batches.full():
            batches.get_nowait()  # make room for the end
        batches.put_nowait(batch)

    def deliver(batch: list[str] | None) -> None:  # on the log writer thread
        try:
            loop.call_soon_threadsafe(put, batch)
        except RuntimeError:  # the loop is closed: the server is gone, and this follow with it
            pass

    lines, stop = await asyncio.to_thread(services(request).logs.follow, name, deliver, read_limit)
    stopping = request.app[STOPPING]
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    try:
        response.enable_chunked_encoding()
        await response.prepare(request)
        selected = selection.select(lines)
        await response.write(_text(selected[-limit:] if limit else selected))
        while True:
            kind, batch = await _next(batches, stopping)
            if kind == "end":
                break
            if kind == "idle":
                if request.transport is None or request.transport.is_closing():
                    break
                continue
            if skipped:
                await response.write(_text([f"[snapfaas] {skipped} log lines skipped: this reader fell behind"]))
                skipped = 0
            wanted = selection.select(batch)
            if wanted:
                await response.write(_text(wanted))
    except ConnectionResetError:  # the client left
        pass
    finally:
        stop()
    return response


async def _next(batches: asyncio.Queue[list[str] | None], stopping: asyncio.Event) -> tuple[str, list[str]]:
    """("batch", lines); ("idle", []) after `CLOSED_CHECK_S` without any; ("end", []) when the log
    store closed or the server is shutting down."""
    if stopping.is_set():
        return "end", []
    getter = asyncio.ensure_future(batches.get())
    halt = asyncio.ensure_future(stopping.wait())
    try:
        done, _ = await asyncio.wait({getter, halt}, timeout=CLOSED_CHECK_S, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (getter, halt):
            if not task.done():
                task.cancel()
    if getter in done:
        batch = getter.result()
        return ("end", []) if batch is None else ("batch", batch)
    return ("end", []) if halt in done else ("idle", [])


def install(app: web.Application) -> None:
    """The route, and the shutdown hook that ends every follow."""
    app[STOPPING] = asyncio.Event()

    async def end_follows(_app: web.Application) -> None:
        app[STOPPING].set()

    app.on_shutdown.append(end_follows)
    app.router.add_get("/snapfaas/v1/logs/{name}", function_logs)
