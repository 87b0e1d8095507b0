"""Tracing: one job, submitted through the real API and run by a real worker (both in this
process) on the spec-checked provider mocks, makes one connected trace, from the request to
each stage, provider call and FFmpeg run, a retried attempt included; with tracing off nothing
of OpenTelemetry's SDK is loaded and nothing is recorded."""

from __future__ import annotations

import asyncio
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select

from tests.conftest import running_worker, serving
from tests.mocks.anthropic import overloaded
from tests.mocks.live import live_mocks
from videoq import store, tracing
from videoq.broker import keys, queue
from videoq.client import Client
from videoq.settings import Settings
from videoq.types import STAGES, scene_count

DURATION_S = 5


@pytest.fixture
def exporter(settings: Settings) -> Iterator[InMemorySpanExporter]:
    """Tracing on for this process, into memory; off again afterwards."""
    spans = InMemorySpanExporter()
    assert tracing.configure(settings, exporter=spans)
    try:
        yield spans
    finally:
        tracing.shutdown()


@dataclass
class Recorded:
    """What a test reads of a finished span."""

    name: str
    span_id: int
    trace_id: int
    parent: int | None
    attrs: dict[str, Any]
    ok: bool
    events: list[str]
    links: list[int]


def finished(exporter: InMemorySpanExporter) -> list[Recorded]:
    return [
        Recorded(
            s.name,
            s.context.span_id,
            s.context.trace_id,
            s.parent.span_id if s.parent is not None else None,
            dict(s.attributes or {}),
            s.status.is_ok,
            [e.name for e in s.events],
            [link.context.span_id for link in s.links],
        )
        for s in exporter.get_finished_spans()
        if s.context is not None
    ]


def by_name(spans: list[Recorded], name: str) -> list[Recorded]:
    return [s for s in spans if s.name == name]


def ancestors(span: Recorded, spans: list[Recorded]) -> list[str]:
    """The names of ``span``'s ancestors, nearest first."""
    ids = {s.span_id: s for s in spans}
    names, current = [], span.parent
    while current is not None and current in ids:
        names.append(ids[current].name)
        current = ids[current].parent
    return names


async def test_one_job_is_one_trace_from_the_request_to_each_ffmpeg_run(
    settings: Settings, exporter: InMemorySpanExporter, api_key: str, sessions: Any
) -> None:
    # The first attempt's script call fails twice (a retry inside the call, then the job is
    # retried); the second attempt succeeds.
    async with live_mocks(settings, provider_retries=1, provider_backoff_s=0.01) as live:
        live.anthropic.fail_next(overloaded(), overloaded())
        async with (
            serving(live.settings) as api,
            running_worker(live.settings),
            Client(api.url, api_key) as client,
        ):
            job = await client.submit(product_name="Kettle", duration_s=DURATION_S)
            final = await client.wait(job.id, timeout=60)
    assert final.status == "succeeded" and final.attempts == 2
    spans = finished(exporter)

    [submit] = [s for s in by_name(spans, "POST /v1/jobs")]
    trace = [s for s in spans if s.trace_id == submit.trace_id]
    assert submit.parent is None and submit.attrs["http.response.status_code"] == 202
    [enqueue] = by_name(trace, "job.enqueue")
    assert enqueue.parent == submit.span_id

    # Both attempts continue the trace the job was submitted in (its row's traceparent).
    runs = sorted(by_name(trace, "job.run"), key=lambda s: s.attrs["videoq.attempt"])
    assert [r.attrs["videoq.attempt"] for r in runs] == [1, 2]
    assert all(r.parent == submit.span_id for r in runs)
    assert all(r.attrs["videoq.job_id"] == job.id for r in runs)
    async with sessions() as session:
        row = (await session.execute(select(store.Job).where(store.Job.id == job.id))).scalar()
    assert row is not None and row.traceparent is not None
    assert row.traceparent.split("-")[1] == format(submit.trace_id, "032x")

    # The second attempt ran every stage, each a child of its run.
    second = runs[1].span_id
    stages = {s.attrs["videoq.stage"]: s for s in trace if s.name.startswith("stage ")}
    assert set(stages) == set(STAGES)
    assert all(s.parent == second for s in stages.values())

    # Each purchase: under its stage, with the model it bought from and what it cost.
    purchases = [s for s in trace if s.name.endswith(" purchase")]
    bought = [(s.attrs["videoq.provider"], s.attrs["videoq.stage"]) for s in purchases]
    assert sorted(bought) == sorted(
        [("anthropic", "script_gen"), ("anthropic", "script_gen"), ("elevenlabs", "voice_gen")]
        + [("replicate", "video_gen")] * scene_count(DURATION_S)
    )
    for purchase in purchases:
        assert purchase.attrs["videoq.model"]
        assert ancestors(purchase, spans)[0] == f"stage {purchase.attrs['videoq.stage']}"
    done = [p for p in purchases if p.ok]
    assert all(isinstance(p.attrs["videoq.cost_usd"], float) for p in done)
    assert {p.attrs["videoq.provider"] for p in done} == {
        "anthropic", "elevenlabs", "replicate",
    }  # fmt: skip
    script = next(p for p in done if p.attrs["videoq.provider"] == "anthropic")
    assert script.attrs["videoq.output_tokens"] > 0

    # Each provider call under its purchase, with its retries: the failing one retried once.
    calls = by_name(trace, "anthropic.messages")
    assert sorted(c.attrs["videoq.provider.retries"] for c in calls) == [0, 1]
    failed = next(c for c in calls if c.attrs["videoq.provider.retries"] == 1)
    assert not failed.ok
    assert failed.events.count("retry") == 1
    assert failed.attrs["videoq.provider.last_error"] == "provider_overloaded"
    assert all(ancestors(c, spans)[0] == "anthropic purchase" for c in calls)
    assert len(by_name(trace, "elevenlabs.text_to_speech")) == 1
    assert len(by_name(trace, "replicate.create")) == scene_count(DURATION_S)

    # The compositing FFmpeg run, and the probe of its output.
    [compose] = by_name(trace, "ffmpeg video")
    assert compose.parent == stages["compositing"].span_id
    assert compose.attrs["process.exit.code"] == 0
    assert compose.attrs["videoq.ffmpeg.output"] == "video.mp4"
    assert any(
        ancestors(p, spans)[0] == "stage compositing" for p in by_name(trace, "ffmpeg probe")
    )

    # Nothing of the job's landed in another trace.
    job_spans = ("job.", "stage ", "ffmpeg", "anthropic", "elevenlabs")
    strays = [s.name for s in spans if s not in trace and s.name.startswith(job_spans)]
    assert strays == []


async def test_a_job_redis_lost_runs_in_the_trace_it_was_submitted_in(
    settings: Settings, exporter: InMemorySpanExporter, api_key: str, redis: Any
) -> None:
    quick = settings.model_copy(update={"pipeline": "tests.fakes:quick", "reconcile_s": 0.2})
    async with serving(quick) as api, Client(api.url, api_key) as client:
        job = await client.submit(product_name="Kettle", duration_s=DURATION_S)
        # Redis loses it: only the job's row is left, and the reconciler enqueues it again.
        await queue.remove(redis, quick, job.id)
        await redis.delete(keys.job_data(job.id))
        assert await redis.zscore(quick.queue_name, job.id) is None
        async with running_worker(quick):
            final = await client.wait(job.id, timeout=60)
    assert final.status == "succeeded"
    spans = finished(exporter)
    [submit] = by_name(spans, "POST /v1/jobs")
    [run] = by_name(spans, "job.run")
    assert (run.trace_id, run.parent) == (submit.trace_id, submit.span_id)


async def test_a_retry_request_links_to_the_jobs_trace(
    settings: Settings, exporter: InMemorySpanExporter, api_key: str, sessions: Any
) -> None:
    async with serving(settings) as api, Client(api.url, api_key) as client:
        job = await client.submit(product_name="Kettle", duration_s=DURATION_S)
        await client.cancel(job.id)
        await client.retry(job.id)
    spans = finished(exporter)
    [submit] = by_name(spans, "POST /v1/jobs")
    [retry] = by_name(spans, "POST /v1/jobs/{job_id}/retry")
    assert retry.trace_id != submit.trace_id
    assert retry.links == [submit.span_id]
    assert retry.attrs["videoq.job_id"] == job.id


async def test_a_callers_traceparent_parents_the_request_span(
    settings: Settings, exporter: InMemorySpanExporter
) -> None:
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with serving(settings) as api, httpx.AsyncClient(base_url=api.url) as client:
        await client.get("/v1/jobs", headers={"traceparent": caller})
    [request] = by_name(finished(exporter), "GET /v1/jobs")
    assert format(request.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert request.attrs["http.response.status_code"] == 401


async def test_tracing_off_records_nothing_and_stores_no_context(
    live_api: Any, api_key: str, sessions: Any
) -> None:
    assert not tracing.enabled()
    async with Client(live_api.url, api_key) as client:
        job = await client.submit(product_name="Kettle", duration_s=DURATION_S)
    async with sessions() as session:
        row = (await session.execute(select(store.Job).where(store.Job.id == job.id))).scalar()
    assert row is not None and row.traceparent is None
    with tracing.span("anything", {"a": 1}):
        assert tracing.traceparent() is None
    assert tracing.span("one") is tracing.span("other")  # one shared no-op


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_off_an_app_and_a_worker_load_no_opentelemetry_sdk() -> None:
    out = run_python(
        "import sys\n"
        "from videoq.api import create_app\n"
        "from videoq.settings import Settings\n"
        "from videoq.workers import create_worker\n"
        "create_app(Settings())\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')"
        " or m.startswith('opentelemetry.exporter')))\n"
    )
    assert out == "[]"


def test_a_configured_endpoint_without_the_sdk_runs_untraced() -> None:
    out = run_python(
        "import sys\n"
        "sys.modules['opentelemetry.sdk'] = None  # as if the extra were not installed\n"
        "from videoq import tracing\n"
        "from videoq.settings import Settings\n"
        "print(tracing.configure(Settings(otlp_endpoint='http://127.0.0.1:4318')),"
        " tracing.enabled())\n"
    )
    assert out.splitlines()[-1] == "False False"


class Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector on loopback that keeps what it is sent."""

    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append((self.path, self.headers["content-type"], body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_configured_endpoint_exports_over_otlp_http(monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}/"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)  # the standard variable
        monkeypatch.setenv("OTEL_SERVICE_NAME", "my-videoq")
        settings = Settings()
        assert settings.otlp_endpoint == endpoint
        assert tracing.configure(settings, service="videoq-worker")
        assert not tracing.configure(settings)  # once per process
        with tracing.span("job.run", {"videoq.attempt": 1}):
            pass
        tracing.shutdown()  # exports what is buffered
    finally:
        server.shutdown()
    assert not tracing.enabled()
    [(path, content_type, body)] = Collector.received
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    sent = ExportTraceServiceRequest.FromString(body)
    [resource] = sent.resource_spans
    names = {a.key: a.value.string_value for a in resource.resource.attributes}
    assert names["service.name"] == "my-videoq" and names["service.namespace"] == "videoq"
    assert [s.name for s in resource.scope_spans[0].spans] == ["job.run"]


async def test_a_task_started_detached_parents_its_spans_to_no_job(
    exporter: InMemorySpanExporter,
) -> None:
    async def shared_poll() -> None:
        with tracing.span("replicate.predictions"):
            pass

    with tracing.span("job.run"):
        with tracing.detached():
            detached = asyncio.create_task(shared_poll())
        inherited = asyncio.create_task(shared_poll())
        await asyncio.gather(detached, inherited)
    [run] = by_name(finished(exporter), "job.run")
    polls = by_name(finished(exporter), "replicate.predictions")
    assert sorted((p.parent is None, p.trace_id == run.trace_id) for p in polls) == [
        (False, True),  # the task that inherited the job's context
        (True, False),  # the detached one: a trace of its own
    ]
