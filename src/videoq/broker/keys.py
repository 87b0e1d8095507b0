"""Every name videoq uses in Redis: keys, key prefixes, pub/sub channels and arq's own names
(arq's ``constants.py`` is the model). Nothing outside :mod:`videoq.broker` spells a Redis name.
"""

from __future__ import annotations

from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

__all__ = [
    "CANCEL_CHANNEL",
    "LIMIT_PREFIX",
    "RATE_LIMIT_PREFIX",
    "REPLICATE_CHANNEL",
    "TASK",
    "TENANT_MAX_RUNNING",
    "TENANT_WEIGHTS",
    "WORKERS",
    "bucket",
    "death_watch_lock",
    "estimate_errors",
    "estimates",
    "fair",
    "feed_lock",
    "in_progress",
    "in_progress_key_prefix",
    "job_channel",
    "job_data",
    "job_key_prefix",
    "job_try",
    "lease_set",
    "reconcile_lock",
    "retry_key_prefix",
    "seq",
    "stream",
    "tenant_channel",
    "tenant_seq",
    "tenant_stream",
    "wake_channel",
    "webhook_seen",
    "worker_info",
]

#: The arq function every videoq job runs as (:func:`videoq.workers.task.run_job`).
TASK = "run_job"

# The queue itself is the sorted set named by ``settings.queue_name`` (default "videoq:queue").
# Per job, arq keeps its data, its try count and, while a worker holds it, its in-progress key.


def job_data(job_id: str) -> str:
    """arq's serialized job (function, arguments, enqueue time)."""
    return job_key_prefix + job_id


def job_try(job_id: str) -> str:
    """arq's try counter of the job."""
    return retry_key_prefix + job_id


def in_progress(job_id: str) -> str:
    """arq's in-progress key: set while a worker holds the job."""
    return in_progress_key_prefix + job_id


def fair(queue_name: str, what: str) -> str:
    """The tenants' shares of ``queue_name`` (:mod:`videoq.broker.shares`): ``tenants`` (each
    waiting tenant's virtual time), ``clock``, ``of`` (each job's tenant), ``t:<tenant>`` (its
    waiting jobs) and ``run:<tenant>`` (its running jobs). The Lua scripts spell the same names
    from the queue's name (:data:`videoq.broker.shares.FAIR_LUA`)."""
    return f"{queue_name}:fair:{what}"


def estimates(queue_name: str) -> str:
    """Recent stage durations of ``queue_name``'s jobs, by stage and provider/model."""
    return f"videoq:eta:{queue_name}"


def estimate_errors(queue_name: str) -> str:
    """How far the ETAs given at submit were from the truth: a histogram's counts."""
    return f"videoq:eta-errors:{queue_name}"


#: Each tenant's weight and running-job limit, as admins set them (the copy of ``tenants``).
TENANT_WEIGHTS = "videoq:tenants:weight"
TENANT_MAX_RUNNING = "videoq:tenants:max_running"


def wake_channel(queue_name: str) -> str:
    """Published on when a job is enqueued on ``queue_name``: idle workers look at once."""
    return f"videoq:wake:{queue_name}"


#: Published on with a job id: whichever worker runs it stops it now.
CANCEL_CHANNEL = "videoq:cancel"


def reconcile_lock(queue_name: str) -> str:
    """Held by the one worker reconciling ``queue_name`` in this period."""
    return f"videoq:reconcile-lock:{queue_name}"


def feed_lock(queue_name: str) -> str:
    """Held by the one worker embedding finished videos and refilling feeds in this period."""
    return f"videoq:feed-lock:{queue_name}"


def death_watch_lock(queue_name: str) -> str:
    """Held by the one worker looking for dead workers of ``queue_name`` in this period."""
    return f"videoq:death-watch-lock:{queue_name}"


# Events (DESIGN.md "Events"): per job a seq counter and a capped stream, and two channels.


def seq(job_id: str) -> str:
    return f"videoq:seq:{job_id}"


def stream(job_id: str) -> str:
    return f"videoq:stream:{job_id}"


def job_channel(job_id: str) -> str:
    return f"videoq:events:job:{job_id}"


def tenant_channel(tenant: str) -> str:
    return f"videoq:events:tenant:{tenant}"


# Per tenant, the same again for its feed (``WS /v1/events``): a counter and a capped stream.


def tenant_seq(tenant: str) -> str:
    return f"videoq:tseq:{tenant}"


def tenant_stream(tenant: str) -> str:
    return f"videoq:tstream:{tenant}"


# The worker registry: a sorted set of worker ids by last heartbeat, one document per worker.

WORKERS = "videoq:workers"


def worker_info(worker_id: str) -> str:
    return f"videoq:worker:{worker_id}"


# Limits: per-tenant token buckets for job creation, per-provider lease sets.

RATE_LIMIT_PREFIX = "videoq:ratelimit:"
LIMIT_PREFIX = "videoq:limit:"


def bucket(tenant: str) -> str:
    return RATE_LIMIT_PREFIX + tenant


def lease_set(name: str) -> str:
    return LIMIT_PREFIX + name


# Inbound webhooks.


def webhook_seen(source: str, webhook_id: str) -> str:
    """Set once a verified webhook's id was received: a replay is refused."""
    return f"videoq:webhook-seen:{source}:{webhook_id}"


#: Published on with a prediction id when a verified Replicate webhook reports on it: every
#: worker subscribes once and wakes its own waiter for that id, if any.
REPLICATE_CHANNEL = "videoq:replicate"
