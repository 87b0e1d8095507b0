"""structlog configuration: JSON in production, console in development, secrets redacted.

Context such as ``job_id``, ``worker_id``, ``stage`` and ``attempt`` is bound through
:func:`structlog.contextvars.bind_contextvars` and appears on every line logged inside it.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

from videoq.settings import Settings

_SECRET_KEYS = re.compile(
    r"(api[_-]?key|token|secret|password|authorization|signature|cookie)", re.IGNORECASE
)
# Values that look like credentials wherever they appear: our keys, Replicate tokens, Anthropic
# keys, bearer headers, and passwords inside URLs.
_SECRET_VALUES = re.compile(
    r"(vq_[A-Za-z0-9_-]{8,}|r8_[A-Za-z0-9]{8,}|sk-ant-[A-Za-z0-9_-]{8,}|Bearer\s+\S+"
    r"|(?<=://)[^/@\s:]+:[^/@\s]+(?=@))"
)
REDACTED = "[redacted]"
#: The part of arq's job-start line that counts from the job's queue score.
_ARQ_DELAYED = re.compile(r" delayed=[0-9.]+s")
#: The loggers arq's own command line (``arq videoq.workers.WorkerSettings``) gives handlers.
ARQ_LOGGERS = ("arq",)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUES.sub(REDACTED, value)
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEYS.search(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: blanks secret-named keys and credential-shaped values."""
    return {k: REDACTED if _SECRET_KEYS.search(k) else _scrub(v) for k, v in event_dict.items()}


class ArqStartLine(logging.Filter):
    """Drops ``delayed=…s`` from arq's job-start line (``0.01s → job_id:run_job(…)
    delayed=300.01s``). arq counts it from the job's queue score, and videoq's priorities are
    score offsets (:mod:`videoq.broker.queue`): every ``normal`` job would read as 300 s late,
    every ``high`` one as 600 s. The line's first figure, the time since the job was
    enqueued, stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args and isinstance(args[-1], str):
            record.args = (*args[:-1], _ARQ_DELAYED.sub("", args[-1]))
        return True


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Set up structlog once per process, and the standard library's loggers (arq, uvicorn,
    httpx, asyncpg) to render through the same processors: one format, secrets redacted
    everywhere. Lines go to ``stream`` (default: standard error)."""
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(level, logging.WARNING))
    for name in ARQ_LOGGERS:
        # arq's command line gave its logger a handler of its own, and its lines propagate
        # to the root's as well: each would be written twice, once in arq's format.
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    arq_worker = logging.getLogger("arq.worker")
    if not any(isinstance(f, ArqStartLine) for f in arq_worker.filters):
        arq_worker.addFilter(ArqStartLine())
