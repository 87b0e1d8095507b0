"""The WebSockets. ``WS /v1/jobs/{id}/events``: a snapshot, then every later event of the job
in ``seq`` order, closing after the terminal one. ``?after=SEQ`` resumes exactly after the last
event a client saw. ``WS /v1/events``: the tenant's events in ``tenant_seq`` order, and
``?after=TSEQ`` resumes the same way.

The socket subscribes *before* it reads the current ``seq``, so nothing published in between is
lost; events it already sent are skipped by ``seq``, and any gap is filled from the job's
history. When the process's pub/sub connection broke and came back (Redis restarted), what was
published meanwhile is sent from the history before the live events that follow.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from videoq import lifecycle
from videoq.api import dashboard
from videoq.api.deps import State, principal, state_of
from videoq.broker import events, keys
from videoq.broker.fanout import RESUBSCRIBED
from videoq.errors import Forbidden, NotFound, Unauthorized
from videoq.store import jobs
from videoq.store.apikeys import Principal
from videoq.types import TERMINAL, make_event

log = structlog.get_logger(__name__)

CLOSE_NORMAL = 1000
CLOSE_INVALID = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_SLOW = 4408


def is_terminal(event: dict[str, Any]) -> bool:
    return event.get("type") == "status" and event.get("status") in TERMINAL


async def _caller(ws: WebSocket) -> Principal | None:
    """Accept the socket and authenticate it; None once it is closed for a bad key."""
    await ws.accept()
    try:
        return await principal(ws)
    except Unauthorized as exc:
        await ws.close(CLOSE_UNAUTHORIZED, exc.message)
        return None
    except Forbidden as exc:  # a session cookie sent from another site's page
        await ws.close(CLOSE_FORBIDDEN, exc.message)
        return None


async def job_events_socket(ws: WebSocket) -> None:
    st = state_of(ws)
    who = await _caller(ws)
    if who is None:
        return
    try:
        after = _after(ws)
    except ValueError:
        await ws.close(CLOSE_INVALID, "after must be a non-negative integer")
        return
    try:
        async with st.sessions() as session:
            job = await jobs.get_job(session, ws.path_params["job_id"], who.tenant)
    except NotFound as exc:
        await ws.close(CLOSE_NOT_FOUND, exc.message)
        return
    job_id = str(job.id)
    async with st.broadcaster.subscribe(keys.job_channel(job_id)) as queue:
        archive = lifecycle.archive_of(st)
        current = await events.current_seq(st.redis, archive, job_id)
        async with st.sessions() as session:  # read after `current`: at least that new
            job = await jobs.get_job(session, job_id, None)
        await ws.send_json(
            make_event(
                job_id, "snapshot", status=job.status, stage=job.stage, progress=job.progress,
                worker_id=job.worker_id, message=None, seq=current,
            )
        )  # fmt: skip
        sent = current if after is None else min(after, current)
        if sent < current:
            for event in await events.history(st.redis, archive, job_id, sent, current):
                await ws.send_json(event)
                sent = event["seq"]
                if is_terminal(event):
                    await ws.close(CLOSE_NORMAL)
                    return
        if job.status in TERMINAL and sent >= current:
            await ws.close(CLOSE_NORMAL)
            return
        await _Pump(ws, st, job_id, queue, sent).run()


async def tenant_events_socket(ws: WebSocket) -> None:
    """``WS /v1/events?after=TSEQ``: every event of the caller's tenant, for dashboards, each
    with its ``tenant_seq``. Like a job's socket it subscribes before it reads the current
    number, so with ``after`` it replays exactly what the client missed, then follows live;
    without, it follows live from now. No snapshot comes first (a dashboard reads current state
    from ``GET /v1/jobs``); events that belong to no job (``feed_updated``) carry no
    ``tenant_seq`` and are sent live only. ``?stats=1`` adds a ``stats`` message (queue and
    worker figures, :func:`videoq.api.dashboard.figures`) at once and every
    :data:`STATS_PERIOD_S`, in the same stream, so a console's figures and jobs agree."""
    st = state_of(ws)
    who = await _caller(ws)
    if who is None:
        return
    try:
        after = _after(ws)
    except ValueError:
        await ws.close(CLOSE_INVALID, "after must be a non-negative integer")
        return
    async with st.broadcaster.subscribe(keys.tenant_channel(who.tenant)) as queue:
        feed = _TenantFeed(ws, st, who, queue)
        current = await events.current_tenant_seq(st.redis, feed.archive, who.tenant)
        feed.sent = current if after is None else min(after, current)
        if feed.sent < current:
            await feed.send(await feed.history(current))
        ticker = None
        if ws.query_params.get("stats") in ("1", "true"):
            await ws.send_json(await dashboard.figures(st, who))
            ticker = asyncio.create_task(feed.tick())
        try:
            await _until_done(ws, feed.forward(), "tenant")
        finally:
            if ticker is not None:
                ticker.cancel()


def _after(ws: WebSocket) -> int | None:
    """The socket's ``?after=``: None when absent; ValueError when not a non-negative
    integer."""
    raw = ws.query_params.get("after")
    if raw is None:
        return None
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value


#: How often a tenant socket opened with ``?stats=1`` sends a ``stats`` message.
STATS_PERIOD_S = 5.0
#: Put in a tenant socket's queue by its ticker: time for a ``stats`` message.
_STATS: dict[str, Any] = {"type": "_stats"}


class _TenantFeed:
    """One tenant socket's events in ``tenant_seq`` order, gaps filled from the history: the
    tenant's part of :class:`_Pump`, which never ends by itself."""

    def __init__(
        self, ws: WebSocket, st: State, who: Principal, queue: asyncio.Queue[dict[str, Any] | None]
    ) -> None:
        self.ws, self.st, self.who, self.queue = ws, st, who, queue
        self.tenant = who.tenant
        self.archive = lifecycle.archive_of(st)
        self.sent = 0  # the last tenant_seq this client has

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(STATS_PERIOD_S)
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(_STATS)

    async def history(self, upto: int | None = None) -> list[dict[str, Any]]:
        return await events.tenant_history(
            self.st.redis, self.archive, self.tenant, self.sent, upto
        )

    async def forward(self) -> int:
        while True:
            event = await self.queue.get()
            if event is None:
                return CLOSE_TOO_SLOW
            if event is RESUBSCRIBED:  # what was published while pub/sub was away
                await self.send(await self.history())
                continue
            if event is _STATS:
                await self.ws.send_json(await dashboard.figures(self.st, self.who))
                continue
            number = event.get("tenant_seq")
            if number is None:
                await self.ws.send_json(event)
            elif number > self.sent + 1:  # missed on pub/sub: from the history
                batch = await self.history(number)
                if not batch or batch[-1]["tenant_seq"] != number:
                    batch.append(event)
                await self.send(batch)
            elif number == self.sent + 1:
                await self.send([event])

    async def send(self, batch: list[dict[str, Any]]) -> None:
        for item in batch:
            if item["tenant_seq"] > self.sent:
                await self.ws.send_json(item)
                self.sent = item["tenant_seq"]


async def _until_done(ws: WebSocket, forward: Any, label: str) -> None:
    """Run ``forward`` until it returns a close code or the client leaves; then close."""

    async def client_gone() -> int:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
        return -1

    tasks = [asyncio.create_task(forward), asyncio.create_task(client_gone())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        code = done.pop().result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client may be gone
        if code == CLOSE_TOO_SLOW:
            log.info("websocket_dropped_slow_client", stream=label)
            await ws.close(CLOSE_TOO_SLOW, "client too slow")
        elif code == CLOSE_NORMAL:
            await ws.close(CLOSE_NORMAL)


#: Put in a socket's queue by its watchdog; one timer per socket per period, not per event.
_CHECK: dict[str, Any] = {"type": "_check"}


class _Pump:
    """One job socket's live events, in ``seq`` order, gaps filled from the history: those seen
    on pub/sub, and all it missed while the process's pub/sub connection was broken."""

    def __init__(
        self,
        ws: WebSocket,
        st: State,
        job_id: str,
        queue: asyncio.Queue[dict[str, Any] | None],
        sent: int,
    ) -> None:
        self.ws, self.st, self.job_id, self.queue = ws, st, job_id, queue
        self.archive = lifecycle.archive_of(st)
        self.sent = sent  # the last seq this client has

    async def run(self) -> None:
        """Forward live events until the terminal one, the client leaves, or it falls
        behind."""
        guard = asyncio.create_task(self.watchdog())
        try:
            await _until_done(self.ws, self.forward(), self.job_id)
        finally:
            guard.cancel()

    async def watchdog(self) -> None:
        while True:
            # A socket that saw no event for this long re-reads its job: a terminal event lost
            # on the way (Redis down when it was published) must not leave it open forever.
            await asyncio.sleep(self.st.settings.ws_idle_check_s)
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(_CHECK)

    async def forward(self) -> int:
        quiet = False  # no event since the last watchdog tick
        while True:
            event = await self.queue.get()
            if event is _CHECK:
                if quiet and await self.finished_meanwhile():
                    return CLOSE_NORMAL
                quiet = True
                continue
            quiet = False
            if event is None:
                return CLOSE_TOO_SLOW
            if event is RESUBSCRIBED:
                if await self.catch_up():
                    return CLOSE_NORMAL
                continue
            if await self.deliver(event):
                return CLOSE_NORMAL

    async def finished_meanwhile(self) -> bool:
        """Whether the job ended though its terminal event never arrived here; if so, what
        this socket missed is sent."""
        async with self.st.sessions() as session:
            job = await jobs.get_job(session, self.job_id, None)
        if job.status not in TERMINAL:
            return False
        await self.send(await events.history(self.st.redis, self.archive, self.job_id, self.sent))
        return True

    async def catch_up(self) -> bool:
        """Send what was published while pub/sub was away (the live events after it follow in
        the queue; those already sent are skipped); whether the terminal one went out."""
        return await self.send(
            await events.history(self.st.redis, self.archive, self.job_id, self.sent)
        )

    async def deliver(self, event: dict[str, Any]) -> bool:
        """Send ``event`` and any it skipped (missed on pub/sub: taken from the history);
        whether the terminal one went out."""
        if event["seq"] <= self.sent:
            return False
        batch = [event]
        if event["seq"] > self.sent + 1:
            batch = await events.history(
                self.st.redis, self.archive, self.job_id, self.sent, event["seq"]
            )
            if not batch or batch[-1]["seq"] != event["seq"]:
                batch.append(event)
        return await self.send(batch)

    async def send(self, batch: list[dict[str, Any]]) -> bool:
        """Send events in order, up to a terminal one; whether one was sent."""
        for item in batch:
            await self.ws.send_json(item)
            self.sent = item["seq"]
            if is_terminal(item):
                return True
        return False
