"""``videoq process-pending`` (and ``videoq worker --burst``): process everything that is due,
then exit. Rounds of a burst worker (every job due now, until none is due and none runs) and a
feed pass (embed the videos that finished, announce the feed items they were, refill every
feed due); a pass that refilled feeds may have made jobs, so another round runs them. Jobs
scheduled for later, or waiting for a retry's backoff or a tenant's budget, stay for the
workers (or the next run)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from videoq import feed
from videoq.broker import queue
from videoq.providers.briefs import OfflineBriefWriter
from videoq.providers.embeddings import OfflineEmbedder
from videoq.settings import Settings
from videoq.store import feed as feed_rows
from videoq.workers import supervisor
from videoq.workers.state import WorkerState

log = structlog.get_logger(__name__)

#: Rounds at most: each is a burst and a feed pass; feeds refilled again and again (users
#: interacting all the while) must not keep one run going for ever.
MAX_ROUNDS = 10


@dataclass(frozen=True)
class Summary:
    """What one run did: jobs this process ran to success or failure, feeds refilled (by any
    worker) while it ran, and the jobs left on its queue, due later."""

    succeeded: int
    failed: int
    refills: int
    waiting: int


async def process_pending(settings: Settings) -> Summary:
    from videoq.workers import create_worker

    started = datetime.now(UTC)
    outcomes: Counter[str] = Counter()
    for _ in range(MAX_ROUNDS):
        worker = create_worker(settings, burst=True)
        worker.on_startup = _without_feed_loop(worker.on_startup)
        try:
            await worker.async_run()
            state: WorkerState = worker.ctx["videoq"]
            refilled = await _feed_pass(state)
            async with state.sessions() as session:
                refills = await feed_rows.refilled_since(session, started)
            # Nothing is due and nothing runs: what the queue holds waits for later.
            waiting = await queue.length(state.redis, settings.queue_name)
        finally:
            await worker.close()
        outcomes.update(state.counts)
        if not refilled:
            break
    return Summary(outcomes["succeeded"], outcomes["failed"], refills, waiting)


def _without_feed_loop(startup: Any) -> Any:
    """The worker's start-up, its own feed loop stopped before its first step: the run's feed
    passes do that work between bursts, and a loop of its own could claim a user's refill and
    be cancelled in the middle of it when the burst ends (the claim then holds the user for
    :data:`videoq.feed.CLAIM_LEASE_S`)."""

    async def started(ctx: dict[str, Any]) -> None:
        await startup(ctx)
        for task in ctx["videoq"].background:
            if task.get_name() == supervisor.FEED_TASK:
                task.cancel()

    return started


async def _feed_pass(state: WorkerState) -> int:
    """One feed pass, to the end (:func:`videoq.feed.refill_due` takes a few users at a time);
    returns how many feeds were refilled. A step that fails is logged and the run goes on, as
    the workers' own feed loop does."""
    embedder = state.embedder or OfflineEmbedder()
    writer = state.providers.briefs(state.settings) if state.providers else OfflineBriefWriter()
    refilled = 0
    try:
        while await feed.embed_finished(state, embedder):
            pass
        await feed.announce_ended(state)
        while claimed := await feed.refill_due(state, embedder, writer):
            refilled += claimed
    except Exception as exc:  # the jobs' summary is still worth printing
        log.warning("feed_step_failed", error=f"{type(exc).__name__}: {exc}")
    return refilled
