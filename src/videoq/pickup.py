"""How a worker picks jobs up: ``VideoqWorker``, arq's worker with its poll timer replaced by
a wake-up (enqueue, a freed slot while there is a backlog) and its per-job start replaced by
one Lua call that takes as many due jobs as there are free slots. Everything after the start
(running the job, its retries, timeouts and results) is arq's own."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from arq import Worker
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms

from videoq.queue import LuaScript

#: Take up to ARGV[3] due jobs of the queue (KEYS[1]) in one round trip: each is taken by
#: setting its arq in-progress key (prefix ARGV[4], for ARGV[2] ms) if no worker holds it —
#: what arq's ``start_jobs`` does with a WATCH/MULTI per job. Running jobs stay in the queue
#: until they finish, so up to ARGV[5] due entries are looked at (:data:`TAKE_SCAN_LIMIT`).
#: Returns id, score, id, ….
_TAKE_JOBS = LuaScript("""
local taken, offset = {}, 0
local want, cap = tonumber(ARGV[3]) * 2, tonumber(ARGV[5])
while #taken < want and offset < cap do
  local page = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES',
                          'LIMIT', offset, 200)
  if #page == 0 then break end
  for i = 1, #page, 2 do
    if #taken < want and redis.call('SET', ARGV[4] .. page[i], '1', 'PX', ARGV[2], 'NX') then
      taken[#taken + 1] = page[i]
      taken[#taken + 1] = page[i + 1]
    end
  end
  offset = offset + 200
end
return taken
""")


#: Due entries one look may pass over: every worker's running jobs sit at the head of the
#: queue until they finish, so this must exceed the jobs all workers run at once (arq itself
#: looks at only ``queue_read_limit`` entries, and starves behind that many running jobs).
TAKE_SCAN_LIMIT = 10_000


class VideoqWorker(Worker):
    """arq's worker, woken the moment a job is enqueued (a pub/sub message from the API)
    instead of polling on a timer. Idle, it polls every ``poll_delay_s`` as a safety net
    (scheduled jobs coming due, a missed wake-up). A wake-up that arrives while every slot is
    busy stays set, so the next free slot looks at the queue at once.

    Each look takes as many due jobs as there are free slots in one Redis round trip
    (:data:`_TAKE_JOBS`) instead of arq's three per job. While the queue has a backlog (the
    last look filled every free slot), every slot that frees up looks again at once, so slots
    never idle waiting for a timer while jobs wait."""

    def __init__(self, **kwargs: Any) -> None:
        self.idle_poll_s = float(kwargs.pop("poll_delay", 0.5))
        super().__init__(**kwargs, poll_delay=0)
        self.wake = asyncio.Event()
        self.wake.set()  # look at the queue as soon as it starts: there may be a backlog
        self.ctx["wake"] = self.wake
        self.backlog = True

    async def _poll_iteration(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.idle_poll_s):
                await self.wake.wait()
        self.wake.clear()
        free = self.max_jobs - self.job_counter
        if self.burst and self.max_burst_jobs >= 0:
            free = min(free, self.max_burst_jobs - self._jobs_started())
        if self.allow_pick_jobs and free > 0:
            await self._take_jobs(free)
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # arq's way: errors of its own run_job surface here
        await self.heart_beat()

    async def _take_jobs(self, free: int) -> None:
        args = (timestamp_ms(), int(self.in_progress_timeout_s * 1000), free,
                in_progress_key_prefix, max(TAKE_SCAN_LIMIT, self.queue_read_limit))  # fmt: skip
        taken = await _TAKE_JOBS(self.pool, [self.queue_name], args)
        self.backlog = len(taken) // 2 == free
        for raw_id, score in zip(taken[::2], taken[1::2], strict=True):
            job_id = raw_id.decode()
            await self.sem.acquire()  # free by the count above: never waits
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        if self.backlog:
            self.wake.set()
