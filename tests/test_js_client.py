"""The browser client as shipped: ``clients/js/`` (what a frontend team copies) is what the
API serves (``/static/videoq.js``, ``/v1/schemas/events.json``: links to it), the wheel
carries the console's files, and real events validate against the schema."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import jsonschema

from videoq.api.dashboard import STATIC
from videoq.children import preexec
from videoq.types import make_event

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients" / "js"
SHARED = ("videoq.js", "videoq.d.ts", "events.schema.json")


def test_the_served_client_is_the_one_in_clients_js() -> None:
    for name in SHARED:
        served = STATIC / name
        assert served.is_symlink() and served.resolve() == (CLIENT / name).resolve(), name


async def test_the_api_serves_the_module_and_the_schema_and_openapi_points_to_it(
    asgi_client: httpx.AsyncClient,
) -> None:
    module = await asgi_client.get("/static/videoq.js")
    assert module.status_code == 200 and module.headers["content-type"].startswith(
        "text/javascript"
    )
    assert "export function subscribe(" in module.text
    schema = await asgi_client.get("/v1/schemas/events.json")
    assert schema.status_code == 200
    assert schema.json()["$id"] == "/v1/schemas/events.json"
    document = (await asgi_client.get("/openapi.json")).json()
    assert document["x-event-schema"] == "/v1/schemas/events.json"
    assert "/v1/schemas/events.json" in document["paths"]


def test_events_validate_against_the_schema() -> None:
    schema: dict[str, Any] = json.loads((CLIENT / "events.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    job = "0b5e3f8e-8a43-4a4e-9a57-3c4b7d0f1a2b"
    good = [
        {**make_event(job, "stage", status="running", stage="voice_gen", progress=25.0), "seq": 4,
         "tenant_seq": 9, "eta_s": 12.5},
        {**make_event(job, "snapshot", status="queued", stage=None, progress=0.0), "seq": 0},
        {**make_event(job, "preview", status="running", stage="video_gen", progress=60.0),
         "seq": 7, "tenant_seq": 12, "data": {"kind": "thumbnail", "scene": 1, "url": "/x.jpg"}},
        {"type": "feed", "change": "ready", "user_id": "u1", "job_id": job,
         "ts": "2026-01-01T00:00:00Z"},
        {"type": "stats", "ts": "2026-01-01T00:00:00Z", "counts": {"queued": 1},
         "oldest_queued_age_s": None, "last_hour": {}},
    ]  # fmt: skip
    for message in good:
        validator.validate(message)
    bad = [
        {**good[0], "status": "exploded"},
        {**good[2], "data": None},
        {**good[0], "seq": "four"},
    ]
    for message in bad:
        assert not validator.is_valid(message), message


def test_the_wheel_carries_the_console(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300, preexec_fn=preexec(),
    )  # fmt: skip
    (wheel,) = tmp_path.glob("videoq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in STATIC.iterdir():
        assert f"videoq/api/static/{path.name}" in names
