"""What the three mocks share: scripted faults, call counts, in-flight tracking, timestamps."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.mocks import spec


@dataclass(frozen=True)
class Reply:
    """A canned answer: status, JSON body, headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/json"

    def response(self) -> Response:
        return Response(
            json.dumps(self.body), self.status, headers=self.headers, media_type=self.media_type
        )


class MockProvider:
    """Base of the mocks. ``latency`` is added to every main call (awaited, not slept on a
    thread); ``faults`` are answered, in order, instead of the next main calls."""

    #: The mock's ASGI app, built by each subclass's ``__init__``.
    app: Starlette
    #: The spec's checks of its main call's request and answer (:mod:`tests.mocks.spec`).
    request_checker: Any
    response_checker: Any

    def __init__(self, *, key: str, latency: float = 0.0) -> None:
        self.key = key
        self.latency = latency
        self.calls: Counter[str] = Counter()
        #: Outputs made, as the provider would bill them (a script, a voice track, a
        #: prediction), whether or not the answer reached the client.
        self.paid = 0
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.invalid: list[str] = []
        self.faults: deque[Reply] = deque()
        self.intervals: list[tuple[str, float, float]] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        #: In flight and peak per endpoint name ("create", "get", "download", ...).
        self.in_flight_by: Counter[str] = Counter()
        self.peak_by: Counter[str] = Counter()

    def fail_next(self, *replies: Reply) -> None:
        """Answer the next main calls with these replies instead."""
        self.faults.extend(replies)

    def reject(self, message: str) -> None:
        """Record a request that broke the spec (tests assert there are none)."""
        self.invalid.append(message)

    @contextmanager
    def tracking(self, name: str) -> Iterator[None]:
        """Count a call as in flight and record when it started and ended (monotonic)."""
        self.calls[name] += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.in_flight_by[name] += 1
        self.peak_by[name] = max(self.peak_by[name], self.in_flight_by[name])
        start = time.monotonic()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.in_flight_by[name] -= 1
            self.intervals.append((name, start, time.monotonic()))

    async def delay(self, since: float) -> None:
        """Wait until ``latency`` after ``since`` (the request's arrival, monotonic): the
        mock's own work counts towards its latency, as a provider's would."""
        remaining = since + self.latency - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)

    def take_fault(self) -> Response | None:
        return self.faults.popleft().response() if self.faults else None

    async def paid_json_call(
        self,
        request: Request,
        name: str,
        *,
        refuse: Callable[[Request], Reply | None],
        invalid: Callable[[str], Reply],
        answer: Callable[[Any], dict[str, Any]],
        headers: Callable[[dict[str, Any]], dict[str, str]] | None = None,
    ) -> Response:
        """One paid call of a JSON API (Anthropic's messages, OpenAI's embeddings), in the
        order such an API checks it: ``refuse`` answers a request it would turn away before
        reading the body (a wrong key, a missing header), then a body that is not JSON or
        breaks the spec (``self.request_checker``) gets ``invalid``, a scripted fault answers
        instead of the call, and otherwise ``answer`` makes the output, which is paid for and
        checked against the spec too (``self.response_checker``; a mock bug, still reported)."""
        arrived = time.monotonic()
        with self.tracking(name):
            refused = refuse(request)
            if refused is not None:
                return refused.response()
            try:
                body = await request.json()
            except ValueError:
                self.reject("body is not JSON")
                return invalid("body is not JSON").response()
            self.bodies.append(body)
            self.headers.append(dict(request.headers))
            problem = spec.errors(self.request_checker, body)
            if problem is not None:
                self.reject(problem)
                return invalid(problem).response()
            fault = self.take_fault()
            if fault is not None:
                await self.delay(arrived)
                return fault
            output = answer(body)
            self.paid += 1
            problem = spec.errors(self.response_checker, output)
            if problem is not None:
                self.reject(f"mock response breaks the spec: {problem}")
            response = JSONResponse(output, headers=headers(output) if headers else None)
            await self.delay(arrived)
            return response


def request_id(prefix: str = "req_") -> str:
    return prefix + secrets.token_hex(12)
