"""Fixtures of the security tests: the real app (in-process, or served by uvicorn for
WebSockets and the fuzzer) with inbound webhook secrets configured, and counters of every
table a request could write to."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select, update
from starlette.applications import Starlette

from tests.conftest import auth as auth  # re-exported: the tests here import it from here
from videoq import store
from videoq.api import create_app
from videoq.settings import Settings
from videoq.signing import sign

GITHUB_SECRET = "gh-secret-for-tests"
REPLICATE_SECRET = "whsec_" + base64.b64encode(b"replicate-signing-key-32-bytes!!").decode()


@pytest.fixture(autouse=True)
async def _park_waiting_jobs(sessions: Any) -> AsyncIterator[None]:
    """Jobs a test here leaves waiting are cancelled after it: the session's database is
    shared, and later tests' workers and reconcilers would otherwise run them."""
    since = datetime.now(UTC)
    yield
    async with sessions() as session:
        await session.execute(
            update(store.Job)
            .where(
                store.Job.created_at >= since,
                store.Job.status.in_(("queued", "scheduled", "retrying")),
            )
            .values(status="cancelled", finished_at=datetime.now(UTC))
        )
        await session.commit()


@pytest.fixture
def secure_settings(settings: Settings) -> Settings:
    """Settings with both inbound webhooks configured; GitHub jobs go to a fresh tenant."""
    return settings.model_copy(
        update={
            "github_webhook_secret": SecretStr(GITHUB_SECRET),
            "github_webhook_tenant": f"gh-{uuid.uuid4().hex[:8]}",
            "replicate_webhook_secret": SecretStr(REPLICATE_SECRET),
        }
    )


@pytest.fixture
async def secure_app(secure_settings: Settings) -> AsyncIterator[Starlette]:
    """The real app, started (lifespan run by hand: ASGITransport does not)."""
    app = create_app(secure_settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def secure_client(secure_app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """httpx on the started app, in-process."""
    transport = httpx.ASGITransport(app=secure_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://videoq") as client:
        yield client


async def raw_request(
    app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[int, dict[str, str], bytes]:
    """One request straight through ASGI, with headers no HTTP client would send (a false or
    malformed Content-Length) and the body in the given chunks."""
    pending = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks or [b""])
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    path_only, _, query = path.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path_only, "raw_path": path_only.encode(),
        "query_string": query.encode(), "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 1234), "server": ("videoq", 80), "state": {},
    }  # fmt: skip
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    out = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
    return start["status"], out, body


async def table_counts(sessions: Any) -> dict[str, int]:
    """Rows in every table the API writes to (the whole table, not one tenant)."""
    tables = {
        "jobs": store.Job,
        "webhook_deliveries": store.WebhookDelivery,
        "inbound_webhooks": store.InboundWebhook,
        "webhook_secrets": store.WebhookSecret,
    }
    async with sessions() as session:
        return {
            name: int((await session.execute(select(func.count()).select_from(model))).scalar_one())
            for name, model in tables.items()
        }


def github_headers(
    body: bytes, event: str = "release", secret: str = GITHUB_SECRET
) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "Content-Type": "application/json",
    }


def replicate_headers(
    body: bytes,
    *,
    timestamp: int | None = None,
    msg_id: str | None = None,
    secret: str = REPLICATE_SECRET,
) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    msg = msg_id or f"msg_{uuid.uuid4().hex}"
    return {
        "webhook-id": msg,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, msg, stamp, body),
        "Content-Type": "application/json",
    }
