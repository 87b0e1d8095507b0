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

import structlog

from videoq import feed
from videoq.providers.briefs import OfflineBriefWriter
from videoq.providers.embeddings import OfflineEmbedder
from videoq.settings import Settings
from videoq.store import feed as feed_rows
from videoq.store import jobs as job_rows
from videoq.types import WAITING
from videoq.workers.state import WorkerState

log = structlog.get_logger(__name__)

#: Rounds at most: each is a burst and a feed pass; feeds refilled again and again (users
#: interacting all the while) must not keep one run going for ever.
MAX_ROUNDS = 10


@dataclass(frozen=True)
class Summary:
    """What one run did: jobs this process ran to success or failure, feeds refilled (by any
    worker) while it ran, and jobs still waiting when it ended."""

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
        try:
            await worker.async_run()
            state: WorkerState = worker.ctx["videoq"]
            refilled = await _feed_pass(state)
            async with state.sessions() as session:
                refills = await feed_rows.refilled_since(session, started)
                counts = (await job_rows.stats(session, None))["counts"]
        finally:
            await worker.close()
        outcomes.update(state.counts)
        if not refilled:
            break
    waiting = sum(n for status, n in counts.items() if status in WAITING)
    return Summary(outcomes["succeeded"], outcomes["failed"], refills, waiting)


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
