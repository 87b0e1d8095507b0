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
