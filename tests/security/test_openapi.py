"""``GET /openapi.json`` describes every route of the app, and a property-based fuzz run
(schemathesis, from the document the real app serves) finds no 5xx on any of them.

The fuzz run is bounded (``EXAMPLES`` per operation and mode, derandomized so CI replays the
same cases) so that it takes seconds; raise ``VIDEOQ_FUZZ_EXAMPLES`` for a deeper run.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from starlette.routing import Route, WebSocketRoute

from tests.conftest import new_key
from tests.security.conftest import auth
from videoq.api import create_app
from videoq.schemas import JobCreate
from videoq.settings import Settings

EXAMPLES = int(os.environ.get("VIDEOQ_FUZZ_EXAMPLES", "30"))

Operation = schemathesis.APIOperation[Any, Any, Any, Any]


async def test_the_document_describes_every_route(
    asgi_client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await asgi_client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"] == "3.1.0"
    described = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    app = create_app(settings)
    served = {
        (m, r.path)
        for r in app.routes
        if isinstance(r, Route)
        for m in r.methods or ()
        if m != "HEAD"
    }
    assert described == served
    sockets = {r.path for r in app.routes if isinstance(r, WebSocketRoute)}
    assert set(doc["x-websockets"]) == sockets
    # Request bodies are the validating models' own schemas.
    job_create = JobCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    job_create.pop("$defs")
    assert doc["components"]["schemas"]["JobCreate"] == job_create
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert "500" in operation["responses"], (method, path)
            keyed = operation["security"] != []
            public = path in PUBLIC or (path == "/v1/session" and method in ("post", "delete"))
            assert keyed == ((not public and "webhooks/" not in path)
                             or path == "/v1/webhooks/secret"), (method, path)  # fmt: skip
            if keyed:
                assert "401" in operation["responses"], (method, path)


#: What needs no key: probes, this document, the console's page and files (it signs in by
#: itself), and the events' schema.
PUBLIC = {"/health", "/openapi.json", "/dashboard", "/static/{name}", "/v1/schemas/events.json"}


@pytest.fixture
async def fuzz_key(sessions: Any) -> str:
    """An admin key, so the fuzzer reaches the operations routes too."""
    return await new_key(sessions, admin=True)


def fuzzer(
    operation: Operation, mode: GenerationMode, key: str, calls: Counter[str]
) -> Callable[[], None]:
    """A bounded hypothesis test of one operation in one generation mode."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case[Operation]) -> None:
        response = case.call(headers=auth(key))
        calls[operation.label] += 1
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500, (
            case.as_curl_command(),
            response.status_code,
            response.text[:500],
        )

    return fuzz


def test_fuzzing_the_api_from_its_schema_finds_no_server_error(
    secure_settings: Settings, fuzz_key: str
) -> None:
    app = create_app(secure_settings)
    # Loaded from the real app's /openapi.json, which also starts its lifespan (in
    # schemathesis's own event loop thread): real PostgreSQL, real Redis.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    calls: Counter[str] = Counter()
    try:
        operations = []
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result.err()  # every operation of the document loads
            operations.append(result.ok())
        assert len(operations) >= 13
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    fuzzer(operation, mode, fuzz_key, calls)()
                except Unsatisfiable:
                    continue  # e.g. no invalid input exists for an operation without inputs
    finally:
        asgi.shutdown_lifespans()
    total = sum(calls.values())
    print(f"\nfuzz: {total} requests over {len(calls)} operations: {dict(calls)}")
    assert set(calls) == {op.label for op in operations}
    assert total >= len(operations) * 5
