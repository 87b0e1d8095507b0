"""The videoq error tree: every error class videoq raises on purpose. Callers catch by level;
the API maps classes to HTTP statuses in one table (:mod:`videoq.api.errors`, walking the class
hierarchy, so a subclass keeps its parent's status), the worker maps them to retry-or-fail in
one place (:mod:`videoq.workers.task`).

    VideoqError
    ├── ProviderError               an AI provider or a tool it drives failed
    │   ├── RetryableError          timeouts, connection errors, 408/409/429/5xx/529
    │   │   └── Declined            past the call's retries, with nothing bought: try another
    │   └── PermanentError          validation, other 4xx, unsupported input, too large
    │       └── FFmpegError         FFmpeg exited non-zero (carries return code, stderr tail)
    ├── AttemptSuperseded           this attempt no longer owns its job (cancelled, taken over)
    ├── OverBudget                  the tenant's budget cannot cover a paid call (or a new job)
    ├── NotFound                    no such job / key (for this tenant)
    ├── VideoNotFinished            an interaction's video is no succeeded job of the tenant
    ├── InvalidParameter            a query parameter a route cannot take (a limit, a cursor)
    ├── Conflict                    the job's state forbids the operation
    ├── Unauthorized                missing or unknown API key
    ├── Forbidden                   the key lacks the scope
    ├── RateLimited                 the tenant creates jobs too fast, or has too many waiting
    ├── UnsafeUrl                   a URL videoq must not call (SSRF guard; also a ValueError)
    ├── StorageMisconfigured        the artifact store's URL cannot be used (at start-up)
    ├── Gone                        the resource existed and has expired (a video past its TTL)
    ├── NotMigrated                 the database schema is behind the code
    └── DatabaseUnavailable         PostgreSQL is down, out of reach or out of connections
"""

from __future__ import annotations

import math


class VideoqError(Exception):
    """Base of every error videoq raises on purpose. ``code`` is stable and machine-readable."""

    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ProviderError(VideoqError):
    """A provider call (HTTP API or FFmpeg) failed."""

    code = "provider_error"
    retryable = False


class RetryableError(ProviderError):
    """Worth trying again later; ``retry_after_s`` is the provider's hint, if it gave one."""

    code = "provider_unavailable"
    retryable = True

    def __init__(
        self, message: str, *, code: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Declined(RetryableError):
    """The provider took none of the work: it kept failing (capacity, 5xx, timeouts) past the
    call's own retries, and nothing the call may have made was found at the provider. Nothing
    was bought, so another provider may be tried at once (``video_gen``'s failover); the code
    is the last failure's."""


class PermanentError(ProviderError):
    """Trying again cannot help: the job fails at once."""

    code = "provider_rejected"


class FFmpegError(PermanentError):
    """FFmpeg exited with a non-zero status."""

    code = "ffmpeg_failed"

    def __init__(self, message: str, *, returncode: int | None, stderr_tail: str) -> None:
        super().__init__(f"{message} (exit {returncode}): {stderr_tail}")
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class AttemptSuperseded(VideoqError):
    """A write of an attempt that no longer owns its job: it was cancelled, or another worker
    took it over. The attempt stops without recording anything."""

    code = "attempt_superseded"


class OverBudget(VideoqError):
    """The tenant's daily or monthly budget cannot cover a paid call: the worker sets the job
    to ``awaiting_budget`` (nothing bought, its checkpoints kept), and the API answers 402 to
    a create when the tenant asked for that (``reject_when_over_budget``)."""

    code = "over_budget"


class NotFound(VideoqError):
    """The resource does not exist, or belongs to another tenant."""

    code = "not_found"


class VideoNotFinished(VideoqError):
    """An interaction names a video that is no succeeded job of the caller's tenant: unknown,
    unfinished and another tenant's look alike (422, naming ``video_id``)."""

    code = "validation_error"


class InvalidParameter(VideoqError):
    """A query parameter the route cannot take, such as a ``limit`` out of range or a
    ``cursor`` it never gave (422, naming the parameter in ``details``)."""

    code = "validation_error"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


class Conflict(VideoqError):
    """The resource's current state does not allow the operation."""

    code = "conflict"


class Unauthorized(VideoqError):
    """No API key, or an unknown or revoked one."""

    code = "unauthorized"


class Forbidden(VideoqError):
    """The API key is valid but lacks the scope for this operation."""

    code = "forbidden"


class NotMigrated(VideoqError):
    """The database is missing migrations; run ``videoq migrate``."""

    code = "not_migrated"


def retry_after(seconds: float) -> dict[str, str]:
    """The ``Retry-After`` header of an answer that asks to be tried again in ``seconds``
    (whole seconds, at least one)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class RateLimited(VideoqError):
    """Too many requests: the tenant's bucket is empty or its queue is full. The API answers
    429 with ``Retry-After: retry_after_s`` (rounded up)."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return retry_after(self.retry_after_s)


class UnsafeUrl(VideoqError, ValueError):
    """A URL videoq must not call (wrong scheme, or a host on a non-public address). A
    ``ValueError`` too, so request validators report it as a field error."""

    code = "unsafe_url"


class StorageMisconfigured(VideoqError):
    """``VIDEOQ_STORAGE_URL`` names a store that cannot be used: an unknown scheme, a missing
    bucket, an unreachable endpoint. Raised at start-up, never at a job."""

    code = "storage_misconfigured"


class Gone(VideoqError):
    """The resource existed and is no longer kept (a video past ``artifact_ttl_days``)."""

    code = "gone"


class IdempotencyKeyReused(VideoqError):
    """An ``Idempotency-Key`` sent again with another request body than the first time."""

    code = "idempotency_key_reused"


class DatabaseUnavailable(VideoqError):
    """PostgreSQL cannot serve the request now: it is stopped, starting up or shutting down,
    out of reach, dropped the connection, or has no connection free. Which database errors are
    one is decided in :func:`videoq.store.outage`. The API answers 503 with
    ``Retry-After: retry_after_s``."""

    code = "database_unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 2.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return retry_after(self.retry_after_s)
