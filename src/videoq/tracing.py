"""OpenTelemetry tracing: off unless configured, and then one trace per job, from the API
request that submitted it to its last FFmpeg run (docs/tracing.md lists the spans).

:func:`configure` turns tracing on for the process when ``settings.otlp_endpoint`` is set (spans
exported over OTLP/HTTP; the ``tracing`` extra installs the SDK) or an exporter is passed (the
tests' in-memory one). Off, videoq imports nothing of OpenTelemetry and :func:`span` hands
out one shared no-op context manager.

A job carries its trace across processes in its row: :func:`traceparent` is the W3C
``traceparent`` of the current span, stored when the job is created, and the worker's
``job.run`` span of every attempt (retried, recovered after a crash, taken over) is its child
(``span(..., parent=...)``), so all of them land in the submitting request's trace.

videoq's spans come from its own tracer provider, not OpenTelemetry's global one: libraries
that trace themselves through the global API (the Anthropic SDK does) stay silent and send no
trace headers to providers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog

from videoq.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

log = structlog.get_logger(__name__)

Kind = Literal["internal", "server", "client", "producer", "consumer"]
#: A span's attributes by name; None values are dropped.
Attributes = Mapping[str, str | bool | int | float | None]


class Span(Protocol):
    """What callers may do with the span :func:`span` yields (an OpenTelemetry span, or a
    no-op one when tracing is off)."""

    def set_attribute(self, key: str, value: Any) -> None: ...

    def add_event(self, name: str, attributes: Any = None) -> None: ...

    def update_name(self, name: str) -> None: ...


class _Off:
    """The span of a process that does not trace: it keeps nothing."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def add_event(self, name: str, attributes: Any = None) -> None:
        pass

    def update_name(self, name: str) -> None:
        pass

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


_OFF = _Off()
_provider: TracerProvider | None = None
_tracer: Tracer | None = None


def enabled() -> bool:
    """Whether this process traces."""
    return _tracer is not None


def configure(
    settings: Settings, *, service: str = "videoq", exporter: SpanExporter | None = None
) -> bool:
    """Turn tracing on for this process when ``settings.otlp_endpoint`` is set or ``exporter``
    is given; True when this call did (the caller then :func:`shutdown` s it at its end). A
    process already tracing keeps its set-up (an API and a worker in one process share one).
    ``service`` is the ``service.name`` unless ``OTEL_SERVICE_NAME`` says otherwise; the SDK
    also honours ``OTEL_TRACES_SAMPLER``, ``OTEL_RESOURCE_ATTRIBUTES`` and the exporter's
    ``OTEL_EXPORTER_OTLP_*`` variables (headers, timeout). Without the SDK installed, a
    configured endpoint is logged as unusable and the process runs untraced."""
    global _provider, _tracer
    if _tracer is not None or (settings.otlp_endpoint is None and exporter is None):
        return False
    try:
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning("tracing_unavailable", reason="pip install 'videoq[tracing]'")
        return False
    resource = Resource.create({"service.name": service, "service.namespace": "videoq"})
    provider = TracerProvider(resource=resource.merge(OTELResourceDetector().detect()))
    if exporter is not None:
        # Each span handed over as it ends: tests read them at once.
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        assert settings.otlp_endpoint is not None
        endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _provider, _tracer = provider, provider.get_tracer("videoq")
    log.info("tracing_configured", service=service, endpoint=settings.otlp_endpoint)
    return True


def shutdown() -> None:
    """Export the spans still buffered and stop tracing (the process is ending)."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def span(
    name: str,
    attributes: Attributes | None = None,
    *,
    kind: Kind = "internal",
    parent: str | None = None,
    link: str | None = None,
    start_ns: int | None = None,
) -> contextlib.AbstractContextManager[Span]:
    """A span around a block, current inside it, with ``attributes`` (None values dropped): a
    child of the current span, or of ``parent`` (a ``traceparent``) when given; ``link`` (a
    ``traceparent``) adds a link to another trace; ``start_ns`` backdates it (epoch
    nanoseconds). An exception leaving the block is recorded on it. Off, a shared no-op."""
    if _tracer is None:
        return _OFF
    return _started(name, kind, parent, link, start_ns, attributes or {})


@contextlib.contextmanager
def _started(
    name: str,
    kind: Kind,
    parent: str | None,
    link: str | None,
    start_ns: int | None,
    attributes: Attributes,
) -> Iterator[Span]:
    from opentelemetry import trace

    assert _tracer is not None
    links = None
    if link is not None and (linked := _span_context(link)) is not None:
        links = [trace.Link(linked)]
    with _tracer.start_as_current_span(
        name,
        context=_extract(parent) if parent is not None else None,
        kind=trace.SpanKind[kind.upper()],
        attributes={k: v for k, v in attributes.items() if v is not None},
        links=links,
        start_time=start_ns,
    ) as current:
        yield current


def annotate(attributes: Attributes, *, link: str | None = None) -> None:
    """Set ``attributes`` on the current span (what is learnt after it started: a call's
    cost; None values dropped), and a link to ``link`` (a ``traceparent``)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    for key, value in attributes.items():
        if value is not None:
            current.set_attribute(key, value)
    if link is not None and (linked := _span_context(link)) is not None:
        current.add_link(linked)


@contextlib.contextmanager
def detached() -> Iterator[None]:
    """No span is current inside the block: a task started there that serves many jobs (a
    shared poll) parents its spans to none of them."""
    if _tracer is None:
        yield
        return
    from opentelemetry import context

    token = context.attach(context.Context())
    try:
        yield
    finally:
        context.detach(token)


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span; None when tracing is off or no span is."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def _extract(value: str) -> Any:
    """The context whose remote parent is ``value`` (an invalid one parents nothing)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": value})


def _span_context(value: str) -> Any:
    from opentelemetry import trace

    found = trace.get_current_span(_extract(value)).get_span_context()
    return found if found.is_valid else None


__all__ = [
    "Attributes",
    "Span",
    "annotate",
    "configure",
    "detached",
    "enabled",
    "shutdown",
    "span",
    "traceparent",
]
