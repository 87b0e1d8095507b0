"""``GET /openapi.json``: the API described as OpenAPI 3.1.

Request bodies come from the pydantic models that validate them (:class:`JobCreate`), so the
document cannot drift from the validation; responses are described here by hand, next to the
one error shape every route shares. WebSockets, which OpenAPI cannot describe, are listed under
``x-websockets``. ``tests/security`` checks that every route of the app is described and fuzzes
the API from this document.
"""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from videoq.schemas import InteractionCreate, JobCreate, TenantUpdate
from videoq.types import JobStatus

BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
PUBLIC: list[dict[str, list[str]]] = []


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses}


ERROR_DESCRIPTIONS = {
    400: "The body is not valid JSON (`bad_request`).",
    401: "Missing, unknown or revoked API key, or a webhook whose signature does not verify "
    "(`unauthorized`, `invalid_signature`).",
    402: "The tenant's budget is spent and it asked for creates to be refused meanwhile "
    "(`over_budget`, `reject_when_over_budget`).",
    403: "The key lacks the `admin` scope (`forbidden`).",
    404: "No such job for this tenant: another tenant's job is a 404 too (`not_found`).",
    409: "The job's state does not allow this (`conflict`), or a webhook replay.",
    413: "The request body is over the size limit (`too_large`).",
    422: "A field is invalid or unknown; `details` lists `{field, message, type}` "
    "(`validation_error`).",
    429: "The tenant's rate limit or queue cap (`rate_limited`); see `Retry-After`.",
    500: "Internal error: a generic message naming the request id only (`internal_error`).",
    503: "PostgreSQL is unavailable (`database_unavailable`: stopped, restarting, out of reach "
    "or out of connections; try again after `Retry-After` seconds), or not migrated "
    "(`not_migrated`).",
}

JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "description": "The job's id (a UUID).",
    "schema": {"type": "string"},
}

_TS = {"type": ["string", "null"], "format": "date-time"}
#: The query parameters of a paged list.
PAGE = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
    {
        "name": "cursor",
        "in": "query",
        "description": "`next_cursor` of the previous page.",
        "schema": {"type": "string"},
    },
]
TENANT = {
    "name": "tenant",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 100},
}
USER_ID = {
    "name": "user_id",
    "in": "path",
    "required": True,
    "description": "The tenant's own id for its end user.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}
SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {},
                },
            }
        },
    },
    "Job": {
        "type": "object",
        "required": ["id", "status", "stage", "progress", "priority", "attempts", "links"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "status": {"enum": list(JobStatus)},
            "stage": {"type": ["string", "null"]},
            "progress": {"type": "number", "minimum": 0, "maximum": 100},
            "priority": {"enum": ["high", "normal", "low"]},
            "attempts": {"type": "integer", "minimum": 0},
            "max_retries": {"type": "integer"},
            "history": {"type": "array", "items": {"type": "object"}},
            "brief": {"type": "object"},
            "run_at": _TS,
            "created_at": _TS,
            "started_at": _TS,
            "finished_at": _TS,
            "worker_id": {"type": ["string", "null"]},
            "error": {
                "type": ["object", "null"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "retryable": {"type": "boolean"},
                },
            },
            "result": {
                "type": ["object", "null"],
                "properties": {
                    "video_url": {"type": "string"},
                    "captions_url": {
                        "type": ["string", "null"],
                        "description": "The WebVTT file of the burned-in captions (null when "
                        "the brief said `captions: false` or the voice gave no word timings).",
                    },
                    "duration_s": {"type": ["number", "null"]},
                    "size_bytes": {"type": ["integer", "null"]},
                },
            },
            "queue_position": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": "While waiting: the jobs that go first, in fair order.",
            },
            "eta_s": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "While not finished: seconds until it should (null until the "
                "stages' recent durations are known).",
            },
            "cost": _ref("JobCost"),
            "links": {
                "type": "object",
                "properties": {k: {"type": "string"} for k in ("self", "events", "video")},
            },
        },
    },
    "JobCost": {
        "type": "object",
        "required": ["currency", "estimated_usd"],
        "description": "Estimated at submit; `actual_usd` (settled calls), `reserved_usd` "
        "(calls in flight) and `calls` (one per paid call: `script_gen`, `voice_gen`, "
        "`video_gen:<scene>`) on the job's own page.",
        "properties": {
            "currency": {"const": "USD"},
            "estimated_usd": {"type": ["number", "null"]},
            "actual_usd": {"type": "number"},
            "reserved_usd": {"type": "number"},
            "calls": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "key": {"type": "string"},
                        "stage": {"type": "string"},
                        "provider": {"type": "string"},
                        "model": {"type": "string"},
                        "state": {"enum": ["reserved", "settled", "released"]},
                        "reserved_usd": {"type": "number"},
                        "actual_usd": {"type": ["number", "null"]},
                    },
                },
            },
        },
    },
    "Tenant": {
        "type": "object",
        "required": ["tenant", "weight", "max_running"],
        "properties": {
            "tenant": {"type": "string"},
            "weight": {"type": "number", "exclusiveMinimum": 0},
            "max_running": {"type": ["integer", "null"], "minimum": 0},
            "daily_budget_usd": {"type": ["number", "null"], "minimum": 0},
            "monthly_budget_usd": {"type": ["number", "null"], "minimum": 0},
            "reject_when_over_budget": {"type": "boolean"},
        },
    },
    "Estimate": {
        "type": "object",
        "required": ["currency", "total", "stages"],
        "properties": {
            "currency": {"const": "USD"},
            "total": {"type": "number", "minimum": 0},
            "stages": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["provider", "usd"],
                    "properties": {
                        "provider": {"type": "string"},
                        "usd": {"type": "number", "minimum": 0},
                    },
                },
            },
        },
    },
    "Usage": {
        "type": "object",
        "required": ["tenant", "currency", "today_usd", "month_usd", "by_stage"],
        "properties": {
            "tenant": {"type": "string"},
            "currency": {"const": "USD"},
            "day_start": {"type": "string", "format": "date-time"},
            "month_start": {"type": "string", "format": "date-time"},
            "today_usd": {"type": "number"},
            "month_usd": {"type": "number"},
            "reserved_usd": {"type": "number"},
            "daily_budget_usd": {"type": ["number", "null"]},
            "monthly_budget_usd": {"type": ["number", "null"]},
            "by_stage": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "stage": {"type": "string"},
                        "provider": {"type": "string"},
                        "today_usd": {"type": "number"},
                        "month_usd": {"type": "number"},
                    },
                },
            },
        },
    },
    "Interaction": {
        "type": "object",
        "required": ["id", "user_id", "video_id", "type", "watched_s", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "user_id": {"type": "string"},
            "video_id": {"type": "string", "format": "uuid"},
            "type": {"enum": ["view", "like", "save", "share", "skip"]},
            "watched_s": {"type": ["number", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "Feed": {
        "type": "object",
        "required": ["user_id", "data", "next_cursor"],
        "properties": {
            "user_id": {"type": "string"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "job_id", "status", "similarity", "video_url"],
                    "properties": {
                        "type": {"enum": ["existing_video", "generated_video"]},
                        "job_id": {"type": "string", "format": "uuid"},
                        "status": {
                            "enum": ["ready", "pending"],
                            "description": "`pending` while a generated video's job runs.",
                        },
                        "similarity": {"type": "number", "minimum": -1, "maximum": 1},
                        "video_url": {"type": ["string", "null"]},
                    },
                },
            },
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "Preferences": {
        "type": "object",
        "required": ["user_id", "interactions", "preference_updated_at", "briefs"],
        "properties": {
            "user_id": {"type": "string"},
            "interactions": {"type": "integer", "minimum": 0},
            "pending_interactions": {
                "type": "integer",
                "minimum": 0,
                "description": "Interactions since the preference was last computed.",
            },
            "preference_updated_at": _TS,
            "refilled_at": _TS,
            "briefs": {
                "type": "array",
                "description": "The briefs written for the user, newest first.",
                "items": {
                    "type": "object",
                    "properties": {
                        "brief": {"type": "object"},
                        "job_id": {"type": ["string", "null"]},
                        "similarity": {"type": ["number", "null"]},
                        "created_at": {"type": "string", "format": "date-time"},
                    },
                },
            },
        },
    },
    "JobList": {
        "type": "object",
        "required": ["data", "next_cursor"],
        "properties": {
            "data": {"type": "array", "items": _ref("Job")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "redis", "database", "queue_length", "workers"],
        "properties": {
            "status": {"enum": ["healthy", "degraded", "unhealthy"]},
            "redis": {"type": "boolean"},
            "database": {"type": "boolean"},
            "queue_length": {"type": "integer"},
            "workers": {"type": "integer"},
        },
    },
    "QueueStats": {
        "type": "object",
        "required": ["counts", "oldest_queued_age_s", "finished", "queue_length", "workers"],
        "properties": {
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "oldest_queued_age_s": {"type": ["number", "null"]},
            "finished": {"type": "object"},
            "queue_length": {"type": "integer"},
            "workers": {"type": "integer"},
        },
    },
    "WorkerList": {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "array", "items": {"type": "object"}}},
    },
}


def _operations() -> dict[str, Any]:
    job = _json(_ref("Job"), "The job.")
    return {
        "/health": {
            "get": {
                "summary": "Health of the API, Redis, PostgreSQL and the queue",
                "security": PUBLIC,
                "responses": {
                    "200": _json(_ref("Health"), "Healthy or degraded (Redis away)."),
                    "503": _json(_ref("Health"), "Unhealthy: PostgreSQL is unreachable."),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": PUBLIC,
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document.")},
            }
        },
        "/v1/jobs": {
            "post": {
                "summary": "Create a job from a brief",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "A retry with the same key returns the same job (200).",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("JobCreate")}},
                },
                "responses": {
                    "202": _json(_ref("Job"), "Created and queued (or scheduled)."),
                    "200": _json(_ref("Job"), "The job an earlier request with this key made."),
                    **_errors(400, 401, 402, 413, 422, 429),
                },
            },
            "get": {
                "summary": "The tenant's jobs, newest first",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"enum": list(JobStatus)}},
                    *PAGE,
                ],
                "responses": {"200": _json(_ref("JobList"), "One page."), **_errors(401, 422)},
            },
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "summary": "One job",
                "parameters": [JOB_ID],
                "responses": {"200": job, **_errors(401, 404)},
            }
        },
        "/v1/jobs/{job_id}/video": {
            "get": {
                "summary": "The finished MP4 (`Range` requests supported)",
                "parameters": [JOB_ID],
                "responses": {
                    "200": {
                        "description": "The video.",
                        "content": {"video/mp4": {"schema": {"type": "string"}}},
                    },
                    "206": {
                        "description": "Part of the video.",
                        "content": {"video/mp4": {"schema": {"type": "string"}}},
                    },
                    "416": {"description": "The requested range is outside the video."},
                    **_errors(401, 404, 409),
                },
            }
        },
        "/v1/jobs/{job_id}/captions": {
            "get": {
                "summary": "The finished video's captions, as WebVTT",
                "parameters": [JOB_ID],
                "responses": {
                    "200": {
                        "description": "The captions: one cue per short line of the speech.",
                        "content": {"text/vtt": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 404, 409),
                },
            }
        },
        "/v1/jobs/{job_id}/cancel": {
            "post": {
                "summary": "Cancel a queued, scheduled or running job",
                "parameters": [JOB_ID],
                "responses": {
                    "202": _json(_ref("Job"), "Cancelled."),
                    **_errors(401, 404, 409),
                },
            }
        },
        "/v1/jobs/{job_id}/retry": {
            "post": {
                "summary": "Requeue a failed or cancelled job (resumes from its checkpoints)",
                "parameters": [JOB_ID],
                "responses": {
                    "202": _json(_ref("Job"), "Requeued."),
                    **_errors(401, 404, 409),
                },
            }
        },
        "/v1/estimates": {
            "post": {
                "summary": "What a brief would cost, per stage, with this server's providers and "
                "prices; nothing is queued",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("JobCreate")}},
                },
                "responses": {
                    "200": _json(_ref("Estimate"), "The estimate."),
                    **_errors(400, 401, 413, 422),
                },
            }
        },
        "/v1/usage": {
            "get": {
                "summary": "The caller's spend today and this month (UTC), by stage and provider",
                "parameters": [
                    {
                        "name": "tenant",
                        "in": "query",
                        "description": "Another tenant's (admin only).",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 100},
                    }
                ],
                "responses": {"200": _json(_ref("Usage"), "The spend."), **_errors(401, 403, 422)},
            }
        },
        "/v1/tenants/{tenant}": {
            "get": {
                "summary": "A tenant's fair share of the workers and its budgets (admin, or the "
                "tenant's own key)",
                "parameters": [TENANT],
                "responses": {"200": _json(_ref("Tenant"), "The share."), **_errors(401, 403, 422)},
            },
            "put": {
                "summary": "Set a tenant's weight, max_running and budgets (admin); fields left "
                "out keep their value, budgets sent as null are lifted",
                "parameters": [TENANT],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("TenantUpdate")}},
                },
                "responses": {
                    "200": _json(_ref("Tenant"), "The share, as stored."),
                    **_errors(400, 401, 403, 413, 422),
                },
            },
        },
        "/v1/interactions": {
            "post": {
                "summary": "Record an end user's interaction with a finished video of the "
                "tenant; after `preference_update_threshold` of them the user's feed is refilled",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "A retry with the same key records nothing more (200).",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("InteractionCreate")}},
                },
                "responses": {
                    "202": _json(_ref("Interaction"), "Recorded."),
                    "200": _json(
                        _ref("Interaction"), "What an earlier request with this key recorded."
                    ),
                    **_errors(400, 401, 413, 422),
                },
            }
        },
        "/v1/users/{user_id}/feed": {
            "get": {
                "summary": "The user's personalised queue, best first: similar finished videos "
                "and videos made for them",
                "parameters": [
                    USER_ID,
                    *PAGE,
                ],
                "responses": {"200": _json(_ref("Feed"), "One page."), **_errors(401, 422)},
            }
        },
        "/v1/users/{user_id}/preferences": {
            "get": {
                "summary": "The user's interaction count, when their preference was last "
                "computed, and the briefs written for them",
                "parameters": [USER_ID],
                "responses": {
                    "200": _json(_ref("Preferences"), "The preferences."),
                    **_errors(401, 422),
                },
            }
        },
        "/v1/workers": {
            "get": {
                "summary": "Registered workers (admin)",
                "responses": {"200": _json(_ref("WorkerList"), "Workers."), **_errors(401, 403)},
            }
        },
        "/v1/workers/clear-stale": {
            "post": {
                "summary": "Forget workers whose heartbeat stopped (admin)",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["removed"],
                            "properties": {
                                "removed": {"type": "array", "items": {"type": "string"}}
                            },
                        },
                        "The ids removed.",
                    ),
                    **_errors(401, 403),
                },
            }
        },
        "/v1/queue/stats": {
            "get": {
                "summary": "Counts per status, oldest queued job, throughput (admin)",
                "responses": {"200": _json(_ref("QueueStats"), "Statistics."), **_errors(401, 403)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics: jobs, queue, workers, this process's requests "
                "(admin)",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 403),
                },
            }
        },
        "/dashboard": {
            "get": {
                "summary": "A live web page of jobs, and of workers and the queue for admin keys",
                "description": "Browsers send no `Authorization` header when they navigate: the "
                "key may come as `?token=`.",
                "security": [{"bearer": []}, {"token": []}],
                "responses": {
                    "200": {
                        "description": "The page (HTML).",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    **_errors(401),
                },
            }
        },
        "/v1/webhooks/secret": {
            "get": {
                "summary": "The tenant's secret for verifying videoq's webhooks",
                "description": "Outbound webhooks carry `webhook-id`, `webhook-timestamp` and "
                "`webhook-signature` (`v1,<base64 HMAC-SHA256>`, Standard Webhooks).",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["secret"],
                            "properties": {"secret": {"type": "string", "pattern": "^whsec_"}},
                        },
                        "The secret.",
                    ),
                    **_errors(401),
                },
            }
        },
        "/v1/webhooks/github": {
            "post": {
                "summary": "Create a job from a GitHub release or push to the default branch",
                "description": "Authenticated by `X-Hub-Signature-256` (HMAC-SHA256 of the body "
                "with the configured secret), not by an API key. One signed body makes at most "
                "one job.",
                "security": PUBLIC,
                "parameters": [
                    {"name": "X-Hub-Signature-256", "in": "header", "schema": {"type": "string"}},
                    {"name": "X-GitHub-Event", "in": "header", "schema": {"type": "string"}},
                    {"name": "X-GitHub-Delivery", "in": "header", "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "202": _json(_ref("Job"), "A job was created."),
                    "200": _json({"type": "object"}, "Ping, an ignored event, or a repeat."),
                    **_errors(400, 401, 404, 413, 422, 429),
                },
            }
        },
        "/v1/webhooks/replicate": {
            "post": {
                "summary": "Replicate prediction webhook",
                "description": "Verified by Replicate's signing secret (Standard Webhooks) "
                "within a timestamp tolerance; a repeated `webhook-id` is refused.",
                "security": PUBLIC,
                "parameters": [
                    {"name": h, "in": "header", "schema": {"type": "string"}}
                    for h in ("webhook-id", "webhook-timestamp", "webhook-signature")
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "200": _json({"type": "object"}, "Received."),
                    **_errors(400, 401, 404, 409, 413, 422),
                },
            }
        },
    }


WEBSOCKETS = {
    "/v1/jobs/{job_id}/events": "A snapshot, then every later event of the job in `seq` order; "
    "`?after=SEQ` resumes. Auth: `Authorization` header or `?token=`. Close codes: 1000 done, "
    "4400 bad `after`, 4401 bad key, 4404 unknown job (or another tenant's), 4408 too slow.",
    "/v1/events": "Every event of the caller's tenant (dashboards). Auth as above. Beside "
    'job events it carries `{"type": "feed", "change": "refilled" | "ready" | "failed", '
    '"user_id", ...}` when a user\'s feed changes.',
}


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once per process)."""
    schema = JobCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = {**schema.pop("$defs", {}), "JobCreate": schema, **SCHEMAS}
    schemas["TenantUpdate"] = TenantUpdate.model_json_schema()
    schemas["InteractionCreate"] = InteractionCreate.model_json_schema()
    error = _ref("Error")
    responses = {
        f"E{status}": {
            "description": text,
            "content": {"application/json": {"schema": error}},
            **(
                {"headers": {"Retry-After": {"schema": {"type": "integer"}}}}
                if status in (429, 503)
                else {}
            ),
        }
        for status, text in ERROR_DESCRIPTIONS.items()
    }
    paths = _operations()
    for path, item in paths.items():
        for operation in item.values():
            operation.setdefault("security", BEARER)
            operation["responses"].setdefault("500", {"$ref": "#/components/responses/E500"})
            if path != "/openapi.json":  # the one route that does not need PostgreSQL
                operation["responses"].setdefault("503", {"$ref": "#/components/responses/E503"})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "videoq",
            "version": metadata.version("videoq"),
            "description": "Jobs that turn a brief into a finished video. Every error has the "
            'shape `{"error": {"code", "message", "details"}}`. Keys are tenant-scoped: '
            "another tenant's job is a 404.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`vq_…`) from `videoq keys create`.",
                },
                "token": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "The same key, where a browser cannot send a header.",
                },
            },
        },
        "security": BEARER,
        "x-websockets": WEBSOCKETS,
    }


async def route(request: Request) -> Response:
    """``GET /openapi.json`` (no key needed: it holds nothing secret)."""
    return JSONResponse(document())
