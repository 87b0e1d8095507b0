"""What a span costs: ``videoq.tracing.span`` with tracing off (the default) and on (the SDK,
each span handed to an exporter that drops it), against the baseline of an empty block.

    python -m bench.tracing [--calls 200000] [--reps 3] [--quick]

A job makes about 20 spans (docs/tracing.md lists them), so 20 × the cost of one is what
tracing adds to a job. Instructions are steadier than time on a busy machine: ``--only off``
(or ``--only empty``) runs one loop once, untimed, for ``valgrind --tool=callgrind``; the
difference in instructions between two values of ``--calls``, divided by their difference, is
the cost of one span.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

from bench.common import write_section
from videoq import tracing
from videoq.settings import Settings

ATTRIBUTES = {"videoq.stage": "video_gen"}
SPANS_PER_JOB = 20


def empty(calls: int) -> None:
    for _ in range(calls):
        pass


def spans(calls: int) -> None:
    for _ in range(calls):
        with tracing.span("stage video_gen", ATTRIBUTES):
            pass


def ns_per_call(loop: Callable[[int], None], calls: int) -> float:
    """The fastest of five timed runs of ``loop``, per call."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter_ns()
        loop(calls)
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


def traced_ns(calls: int) -> float:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Dropping(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracing.configure(Settings(), exporter=Dropping())
    try:
        return ns_per_call(spans, calls)
    finally:
        tracing.shutdown()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f})"


def main(calls: int, reps: int, quick: bool) -> None:
    base, off, on = [], [], []
    for _ in range(reps):
        base.append(ns_per_call(empty, calls))
        off.append(ns_per_call(spans, calls))
        on.append(traced_ns(max(1, calls // 20)))
    per_job_us = (statistics.median(off) - statistics.median(base)) * SPANS_PER_JOB / 1000
    body = f"""\
`python -m bench.tracing --calls {calls} --reps {reps}`: nanoseconds per `with
tracing.span(name, attributes)` block, the fastest of five loops per repetition, median
(min–max) of {reps} repetitions, beside the baseline of an empty loop in the same run.

| | ns per block |
|---|---|
| baseline: an empty loop | {spread(base)} |
| tracing off (default): the shared no-op | {spread(off)} |
| tracing on: the SDK, each span handed to an exporter that drops it | {spread(on)} |

Off, the {SPANS_PER_JOB} or so spans of a job add {per_job_us:.1f} µs to it, and videoq loads
nothing of the OpenTelemetry SDK.
"""
    print(body)
    if not quick:
        write_section("Tracing overhead", body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a short run that writes nothing")
    parser.add_argument("--only", choices=["off", "empty"], help="one loop, once, untimed")
    args = parser.parse_args()
    if args.only is not None:
        (spans if args.only == "off" else empty)(args.calls)
    elif args.quick:
        main(2000, 1, quick=True)
    else:
        main(args.calls, args.reps, quick=False)
