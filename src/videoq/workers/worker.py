"""How a worker picks jobs up and hands them back: ``VideoqWorker``, arq's worker with its poll
timer replaced by a wake-up (enqueue, a freed slot while there is a backlog), and its per-job
Redis round trips replaced by grouped ones.

arq starts a job with a WATCH/MULTI to take it and a MULTI to read it and count the try, and
ends it with another MULTI: four round trips per job, each paid by the worker's one core. Here
one Lua call takes as many due jobs as there are free slots, reading each one's data and
counting its try (:data:`_TAKE_JOBS`); job ends go out together, one Lua call per batch
(:data:`_END_JOBS`). The keys, and what each outcome does to them, are arq's own, so arq's
``Job`` API, ``enqueue_job`` and its plain worker (``arq videoq.workers.WorkerSettings``) keep
working on the same queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
from arq import Retry, Worker
from arq.jobs import deserialize_job_raw
from arq.utils import ms_to_datetime, timestamp_ms

from videoq.broker.keys import (
    TENANT_MAX_RUNNING,
    TENANT_WEIGHTS,
    in_progress_key_prefix,
    job_key_prefix,
    retry_key_prefix,
)
from videoq.broker.scripts import LuaScript
from videoq.broker.shares import FAIR_LUA
from videoq.groupcommit import GroupCommit

log = structlog.get_logger(__name__)

#: Take up to ARGV[3] due jobs of the queue (KEYS[1]) in one round trip, tenant by tenant in
#: weighted fair order (:mod:`videoq.broker.shares`; KEYS[2] and KEYS[3] are the tenants'
#: weights and running-job limits). Each is taken by setting its arq in-progress key (prefix
#: ARGV[4], for ARGV[2] ms) if no worker holds it — what arq's ``start_jobs`` does with a
#: WATCH/MULTI per job — to this worker's token (ARGV[8]; arq writes ``1``, and only the key's
#: presence means anything to arq), and then, as arq's ``run_job`` does, its data (prefix
#: ARGV[6]) is read and its try counted (prefix ARGV[7]). Jobs that are not indexed under a
#: tenant (enqueued by arq's own API) are taken after, in arq's order, looking at up to ARGV[5]
#: due entries (:data:`TAKE_SCAN_LIMIT`): running jobs stay on the queue until they finish.
#: Returns id, score, data (nil: expired), try, id, ….
_TAKE_JOBS = LuaScript(
    FAIR_LUA
    + """
local taken = {}
local want, cap = tonumber(ARGV[3]) * 4, tonumber(ARGV[5])
local fair = KEYS[1] .. ':fair:'
local function take(id, score)
  if not redis.call('SET', ARGV[4] .. id, ARGV[8], 'PX', ARGV[2], 'NX') then return false end
  local try = redis.call('INCR', ARGV[7] .. id)
  redis.call('EXPIRE', ARGV[7] .. id, 88400)
  taken[#taken + 1] = id
  taken[#taken + 1] = score
  taken[#taken + 1] = redis.call('GET', ARGV[6] .. id)
  taken[#taken + 1] = try
  return true
end
local blocked = {}  -- tenants with nothing to take this look (at their limit, nothing due)
local function under_limit(tenant, run)
  local limit = tonumber(redis.call('HGET', KEYS[3], tenant) or '0')
  if limit <= 0 or redis.call('SCARD', run) < limit then return true end
  for _, id in ipairs(redis.call('SMEMBERS', run)) do  -- forget jobs no worker holds
    if redis.call('EXISTS', ARGV[4] .. id) == 0 then redis.call('SREM', run, id) end
  end
  return redis.call('SCARD', run) < limit
end
-- The next job of the tenant: true when one was taken.
local function take_from(tenant, time)
  local run, waiting = fair .. 'run:' .. tenant, fair .. 't:' .. tenant
  if not under_limit(tenant, run) then return false end
  while true do
    local head = redis.call('ZRANGEBYSCORE', waiting, '-inf', ARGV[1], 'LIMIT', 0, 1)
    if #head == 0 then
      if redis.call('EXISTS', waiting) == 0 then redis.call('ZREM', fair .. 'tenants', tenant) end
      return false
    end
    local id = head[1]
    redis.call('ZREM', waiting, id)
    local score = redis.call('ZSCORE', KEYS[1], id)
    -- Not on the queue any more, or held by a worker: the entry is dropped (an end indexes
    -- the job again if it is to run again).
    if score and take(id, score) then
      local clock = math.max(tonumber(redis.call('GET', fair .. 'clock') or '0'), time)
      local weight = tonumber(redis.call('HGET', KEYS[2], tenant) or '1')
      redis.call('SET', fair .. 'clock', tostring(clock))
      redis.call('ZADD', fair .. 'tenants', clock + 1 / weight, tenant)
      redis.call('SADD', run, id)
      return true
    end
  end
end
while #taken < want do
  local progressed = false
  local page = redis.call('ZRANGE', fair .. 'tenants', 0, 999, 'WITHSCORES')
  for i = 1, #page, 2 do
    local tenant = page[i]
    if not blocked[tenant] then
      if take_from(tenant, tonumber(page[i + 1])) then
        progressed = true
        break
      end
      blocked[tenant] = true
    end
  end
  if not progressed then break end
end
local offset = 0
while #taken < want and offset < cap do
  local page = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES',
                          'LIMIT', offset, 200)
  if #page == 0 then break end
  for i = 1, #page, 2 do
    if #taken < want and redis.call('HEXISTS', fair .. 'of', page[i]) == 0 then
      take(page[i], page[i + 1])
    end
  end
  offset = offset + 200
end
return taken
"""
)

#: End jobs of the queue (KEYS[1]), each given as id, how, score increment (ARGV[5…]):
#: ``done`` removes it and its data and try count (arq's finish); ``later`` moves its score by
#: the increment (arq's ``Retry(defer=…)``); ``again`` only lets go of it, to run again (arq's
#: cancelled job); ``back`` lets go of a job taken ahead that never started, uncounting its
#: try. A job that is to run again goes back among its tenant's waiting jobs. Every job's
#: in-progress key (prefix ARGV[1]) goes last, so no worker can take a job that is still being
#: ended. ARGV[2] and ARGV[3] are the data and try prefixes. A job whose in-progress key no
#: longer holds this worker's token (ARGV[4]) is left alone: its key expired and another worker
#: took it, or this end was already written (a batch whose reply was lost is written again, one
#: end at a time).
_END_JOBS = LuaScript(
    FAIR_LUA
    + """
for i = 5, #ARGV, 3 do
  local id, how = ARGV[i], ARGV[i + 1]
  if redis.call('GET', ARGV[1] .. id) == ARGV[4] then
    local tenant = fair_unrun(KEYS[1], id)
    if how == 'done' then
      redis.call('ZREM', KEYS[1], id)
      redis.call('DEL', ARGV[2] .. id, ARGV[3] .. id)
      redis.call('HDEL', KEYS[1] .. ':fair:of', id)
    else
      if how == 'later' then
        redis.call('ZINCRBY', KEYS[1], ARGV[i + 2], id)
      elseif how == 'back' then
        redis.call('DECR', ARGV[3] .. id)
      end
      if tenant then fair_index(KEYS[1], id, tenant) end
    end
    redis.call('DEL', ARGV[1] .. id)
  end
end
return #ARGV
"""
)


#: Due entries one look may pass over: every worker's running jobs sit at the head of the
#: queue until they finish, so this must exceed the jobs all workers run at once (arq itself
#: looks at only ``queue_read_limit`` entries, and starves behind that many running jobs).
TAKE_SCAN_LIMIT = 10_000

#: Jobs are taken ahead of free slots only as many as slots freed in this window (at most
#: ``prefetch``): about what frees while a look is on its way, so a job taken ahead waits
#: milliseconds for its slot, and workers whose jobs run for minutes take nothing ahead.
AHEAD_WINDOW_S = 0.02
#: A job taken ahead that found no slot in this long goes back to the queue, for any worker.
AHEAD_HOLD_S = 1.0


@dataclass(frozen=True)
class _Taken:
    job_id: str
    score: int
    data: bytes | None
    job_try: int
    at: float  # loop time


@dataclass(frozen=True)
class _End:
    job_id: str
    how: str  # done | later | again | back
    incr_ms: int = 0


class VideoqWorker(Worker):
    """arq's worker, woken the moment a job is enqueued (a pub/sub message from the API)
    instead of polling on a timer. Idle, it polls every ``poll_delay_s`` as a safety net
    (scheduled jobs coming due, a missed wake-up). A wake-up that arrives while every slot is
    busy stays set, so the next free slot looks at the queue at once.

    Each look takes as many due jobs as there are free slots in one Redis round trip, with
    their data (:data:`_TAKE_JOBS`). While the queue has a backlog (the last look filled every
    free slot), every slot that frees up looks again at once, so slots never idle waiting for a
    timer while jobs wait. While jobs finish quickly, a look also takes a few jobs ahead of
    free slots (as many as slots freed in the last ``ahead_window_s``, at most ``prefetch``),
    and a slot that frees starts one of them at once instead of waiting for a look's round
    trip; one that finds no slot within ``ahead_hold_s`` goes back to the queue, as do all at
    shutdown. Jobs run as arq runs them (its tries, timeout, ``Retry``, and a
    cancelled job run again), and their ends are written together (:data:`_END_JOBS`).

    Write-behind: a job function may return an :class:`asyncio.Future`, the writing of its
    record still in flight. Its slot frees at once for the next job; the job ends in Redis
    when the future is done (an exception it raises counts as the function's own), and
    shutdown waits for it. (videoq's ``run_job`` does so once a pipeline succeeded.) arq's
    per-job hooks (``on_job_start``, ``on_job_end``, ``after_job_end``), results
    (``keep_result``) and aborts are not used by videoq and not supported here."""

    def __init__(
        self,
        *,
        prefetch: int | None = None,
        ahead_window_s: float = AHEAD_WINDOW_S,
        ahead_hold_s: float = AHEAD_HOLD_S,
        **kwargs: Any,
    ) -> None:
        self.idle_poll_s = float(kwargs.pop("poll_delay", 0.5))
        super().__init__(**kwargs, poll_delay=0)
        self.wake = asyncio.Event()
        self.wake.set()  # look at the queue as soon as it starts: there may be a backlog
        self.ctx["wake"] = self.wake
        self.backlog = True
        #: What this worker writes in the in-progress keys of the jobs it takes.
        self.token = f"videoq:{uuid.uuid4().hex}"
        #: At most this many jobs taken ahead of free slots (default: a tenth of ``max_jobs``).
        self.prefetch = self.max_jobs // 10 if prefetch is None else prefetch
        self.ahead: deque[_Taken] = deque()
        self.ahead_window_s = ahead_window_s
        self.ahead_hold_s = ahead_hold_s
        self._freed: deque[float] = deque()  # when slots freed, within ahead_window_s
        self._stopping = False
        self._ends: GroupCommit[_End, None] = GroupCommit(self._end_jobs)
        #: Jobs whose work is done and whose record is still being written (write-behind).
        self._behind: set[asyncio.Future[Any]] = set()
        self.ctx["write_behind"] = True
        # arq's close() runs on_shutdown after its jobs' tasks end and before Redis closes:
        # the records and ends still in flight are written there.
        shutdown = self.on_shutdown

        async def on_shutdown(ctx: dict[str, Any]) -> None:
            self._hand_back(len(self.ahead))
            if self._behind:
                await asyncio.wait(self._behind)
            await self._ends.aclose()
            if shutdown is not None:
                await shutdown(ctx)

        self.on_shutdown = on_shutdown

    async def close(self) -> None:
        self._stop_taking()  # also when the main task ended without a signal (an error)
        if not self._handle_signals:
            # What arq's close() does first (stop what runs), done here so that the tasks it
            # cancels can be sorted out before it gathers them; then it does not do it twice.
            self.handle_sig(signal.SIGUSR1)
            self._handle_signals = True
        if self.tasks:
            await asyncio.wait(self.tasks.values())
        for job_id, task in list(self.tasks.items()):
            if task.cancelled():
                # Cancelled before its first step (a signal right after the look that took
                # it): it never ran, so it is let go to run again. (arq's close() would raise
                # on it, and skip writing every other end.)
                del self.tasks[job_id]
                self._end(_End(job_id, "again"))
        await super().close()

    def _jobs_started(self) -> int:
        # Jobs whose record is still being written have left ``tasks`` but are not counted yet.
        return super()._jobs_started() + len(self._behind)

    def handle_sig(self, signum: Any) -> None:
        self._stop_taking()
        super().handle_sig(signum)

    def handle_sig_wait_for_completion(self, signum: Any) -> None:
        self._stop_taking()
        super().handle_sig_wait_for_completion(signum)

    def _stop_taking(self) -> None:
        self._stopping = True
        self._hand_back(len(self.ahead))

    async def _poll_iteration(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.idle_poll_s):
                await self.wake.wait()
        self.wake.clear()
        now = self.loop.time()
        self._hand_back(sum(now - taken.at > self.ahead_hold_s for taken in self.ahead))
        # (Jobs taken ahead need no start here: a freed slot starts one at once.)
        free = want = self.max_jobs - self.job_counter
        if self.burst and self.max_burst_jobs >= 0:
            want = min(free, self.max_burst_jobs - self._jobs_started())
        elif self.backlog:
            want += max(0, self._ahead_wanted() - len(self.ahead))
        if self._taking() and want > 0:
            await self._take_jobs(want)
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # arq's way: errors of its own run_job surface here
        await self.heart_beat()
        if self.burst and self.max_burst_jobs < 0 and await self._burst_over():
            # arq's burst ends once its queue is empty, scheduled jobs included: a job due
            # tomorrow would hold it until tomorrow. Ended here once nothing runs and nothing
            # is due, through arq's own end (its burst job limit, reached now).
            self.max_burst_jobs = self._jobs_started()

    async def _burst_over(self) -> bool:
        """Nothing runs here and no job is due (one another worker runs counts as due)."""
        if self.tasks or self.ahead or self._behind:
            return False
        return not await self.pool.zcount(self.queue_name, "-inf", timestamp_ms())

    def _taking(self) -> bool:
        # videoq's state says whether its scratch disk has room (supervisor.check_scratch).
        state = self.ctx.get("videoq")  # a WorkerState once on_startup ran
        accepting = state is None or state.accepting
        return self.allow_pick_jobs and not self._stopping and bool(accepting)

    def _ahead_wanted(self) -> int:
        self._forget_freed()
        return min(self.prefetch, len(self._freed))

    def _forget_freed(self) -> None:
        cutoff = self.loop.time() - self.ahead_window_s
        while self._freed and self._freed[0] < cutoff:
            self._freed.popleft()

    async def _take_jobs(self, want: int) -> None:
        args = (timestamp_ms(), int(self.in_progress_timeout_s * 1000), want,
                in_progress_key_prefix, max(TAKE_SCAN_LIMIT, self.queue_read_limit),
                job_key_prefix, retry_key_prefix, self.token)  # fmt: skip
        names = [self.queue_name, TENANT_WEIGHTS, TENANT_MAX_RUNNING]
        taken = await _TAKE_JOBS(self.pool, names, args)
        self.backlog = len(taken) // 4 == want
        now = self.loop.time()
        for i in range(0, len(taken), 4):
            raw_id, score, data, job_try = taken[i : i + 4]
            job = _Taken(raw_id.decode(), int(float(score)), data, job_try, now)
            if self.job_counter < self.max_jobs and self._taking():
                self._start(job)
            else:  # slots filled while the look was on its way, or the worker is stopping
                self.ahead.append(job)
        if not self._taking():
            self._hand_back(len(self.ahead))

    def _start(self, job: _Taken) -> None:
        self.job_counter += 1
        task = self.loop.create_task(self._run(job.job_id, job.score, job.data, job.job_try))
        task.add_done_callback(self._slot_freed)
        self.tasks[job.job_id] = task

    def _slot_freed(self, _: object = None) -> None:
        # arq's semaphore is not used: the count of jobs started is the slot count.
        self.job_counter -= 1
        self._freed.append(self.loop.time())
        self._forget_freed()
        if self.ahead and self._taking():
            self._start(self.ahead.popleft())
        if self.backlog:
            self.wake.set()

    def _hand_back(self, count: int) -> None:
        """Let go of the ``count`` oldest jobs taken ahead, for any worker to take."""
        for _ in range(min(count, len(self.ahead))):
            self._end(_End(self.ahead.popleft().job_id, "back"))

    async def _run(self, job_id: str, score: int, data: bytes | None, job_try: int) -> None:
        """Run one taken job as arq's ``run_job`` does, and end it (in a shared write)."""
        outcome = await self._outcome(job_id, score, data, job_try)
        if isinstance(outcome, _End):
            self._end(outcome)
            return
        # The job's work is done and its record is still being written (the future it
        # returned): the slot frees now, and the job ends in Redis once the record is in.
        self._behind.add(outcome)
        outcome.add_done_callback(partial(self._ended_behind, job_id, score))

    def _ended_behind(self, job_id: str, score: int, behind: asyncio.Future[Any]) -> None:
        self._behind.discard(behind)
        error = asyncio.CancelledError() if behind.cancelled() else behind.exception()
        self._end(self._end_of(job_id, score, error))

    def _end(self, end: _End) -> None:
        # Until the end lands, the job's in-progress key keeps any worker from taking it
        # again; shutdown waits for it.
        self._ends.submit(end).add_done_callback(_logged)

    async def _outcome(
        self, job_id: str, score: int, data: bytes | None, job_try: int
    ) -> _End | asyncio.Future[Any]:
        if data is None:
            log.warning("arq_job_expired", job_id=job_id)
            self.jobs_failed += 1
            return _End(job_id, "done")
        try:
            name, args, kwargs, enqueue_try, enqueue_ms = deserialize_job_raw(
                data, deserializer=self.job_deserializer
            )
            function = self.functions[name]
        except Exception as exc:  # arq's way: a job it cannot run is failed and dropped
            log.error("arq_job_unrunnable", job_id=job_id, error=repr(exc))
            self.jobs_failed += 1
            return _End(job_id, "done")
        if enqueue_try and enqueue_try > job_try:
            job_try = enqueue_try
            await self.pool.setex(retry_key_prefix + job_id, 88400, str(job_try))
        max_tries = self.max_tries if function.max_tries is None else function.max_tries
        if job_try > max_tries:
            log.warning("arq_job_max_tries", job_id=job_id, max_tries=max_tries)
            self.jobs_failed += 1
            return _End(job_id, "done")
        ctx = {**self.ctx, "job_id": job_id, "job_try": job_try, "score": score,
               "enqueue_time": ms_to_datetime(enqueue_ms)}  # fmt: skip
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                result = await function.coroutine(ctx, *args, **kwargs)
        except (Exception, asyncio.CancelledError) as exc:
            return self._end_of(job_id, score, exc)
        if isinstance(result, asyncio.Future):
            return result
        return self._end_of(job_id, score, None)

    def _end_of(self, job_id: str, score: int, error: BaseException | None) -> _End:
        """How a job that ran ends, as arq's ``run_job`` decides it."""
        if error is None:
            self.jobs_complete += 1
            return _End(job_id, "done")
        if isinstance(error, Retry | asyncio.CancelledError) and not self.retry_jobs:
            log.warning("arq_job_not_retried", job_id=job_id, error=repr(error))
            self.jobs_failed += 1  # arq's retry_jobs=False: what would run again fails instead
            return _End(job_id, "done")
        if isinstance(error, Retry):
            self.jobs_retried += 1
            if not error.defer_score:
                return _End(job_id, "again")
            return _End(job_id, "later", error.defer_score + timestamp_ms() - score)
        if isinstance(error, asyncio.CancelledError):
            self.jobs_retried += 1  # the worker is stopping: the job runs again elsewhere
            return _End(job_id, "again")
        log.error("arq_job_failed", job_id=job_id, exc_info=error)
        self.jobs_failed += 1
        return _End(job_id, "done")

    async def _end_jobs(self, ends: list[_End]) -> list[None]:
        args: list[Any] = [in_progress_key_prefix, job_key_prefix, retry_key_prefix, self.token]
        for end in ends:
            args += (end.job_id, end.how, end.incr_ms)
        await _END_JOBS(self.pool, [self.queue_name], args)
        return [None] * len(ends)


def _logged(future: asyncio.Future[None]) -> None:
    """Nobody waits for a job's end: a failure to write it is logged. (The job stays in the
    queue; once its in-progress key expires it is taken again and found finished.)"""
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error("arq_job_end_failed", error=str(exc))
