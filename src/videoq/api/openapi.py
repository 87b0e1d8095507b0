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

from videoq.schemas import (
    InteractionCreate,
    JobCreate,
    KeyCreate,
    SceneRerender,
    ScheduleCreate,
    TenantUpdate,
)
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
    410: "The job's files expired (`artifact_ttl_days`) and are deleted (`gone`).",
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

SCENE_INDEX = {
    "name": "index",
    "in": "path",
    "required": True,
    "description": "The scene's index, from 0.",
    "schema": {"type": "string"},
}
VERSION = {
    "name": "version",
    "in": "query",
    "required": False,
    "description": "A version of the video (default: the latest).",
    "schema": {"type": "integer", "minimum": 1},
}
JPEG = {"description": "The image.", "content": {"image/jpeg": {"schema": {"type": "string"}}}}

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
                    "poster_url": {
                        "type": ["string", "null"],
                        "description": "The poster image (JPEG, the video's size).",
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
            "version": {
                "type": "integer",
                "minimum": 1,
                "description": "The video's version: 1, raised by each per-scene re-render.",
            },
            "versions": {
                "type": "array",
                "description": "What each re-render asked for, oldest first.",
                "items": _ref("VersionChange"),
            },
            "links": {
                "type": "object",
                "properties": {
                    k: {"type": "string"} for k in ("self", "events", "video", "scenes")
                },
            },
        },
    },
    "VersionChange": {
        "type": "object",
        "required": ["version", "scene", "changed"],
        "properties": {
            "version": {"type": "integer", "minimum": 2},
            "scene": {"type": "integer", "minimum": 0},
            "changed": {"type": "array", "items": {"enum": ["prompt", "narration"]}},
            "prompt": {"type": "string"},
            "narration": {"type": "string"},
            "requested_at": {"type": "string", "format": "date-time"},
        },
    },
    "Scene": {
        "type": "object",
        "required": [
            "index",
            "narration",
            "prompt",
            "start_s",
            "duration_s",
            "thumbnail_url",
            "cost",
        ],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "narration": {"type": "string"},
            "prompt": {"type": "string", "description": "The scene's visual prompt."},
            "start_s": {"type": "number", "minimum": 0},
            "duration_s": {"type": "number", "minimum": 0},
            "thumbnail_url": {
                "type": ["string", "null"],
                "description": "Null until the scene's clip has landed.",
            },
            "version": {
                "type": "integer",
                "minimum": 1,
                "description": "The version whose clip the scene shows.",
            },
            "cost": {
                "type": ["number", "null"],
                "description": "USD of the scene's clip (its reservation while it is bought); "
                "null when nothing was bought for it.",
            },
        },
    },
    "SceneList": {
        "type": "object",
        "required": ["job_id", "version", "data"],
        "properties": {
            "job_id": {"type": "string", "format": "uuid"},
            "version": {"type": "integer", "minimum": 1},
            "data": {"type": "array", "items": _ref("Scene")},
        },
    },
    "PreviewEvent": {
        "type": "object",
        "description": "The `data` of a `preview` event on the events WebSockets.",
        "required": ["kind", "scene", "url", "version"],
        "properties": {
            "kind": {"enum": ["storyboard", "thumbnail", "poster"]},
            "scene": {"type": ["integer", "null"]},
            "url": {
                "type": "string",
                "description": "Where the API serves it: a path of the API, or a full URL "
                "when the server has a `public_url`.",
            },
            "version": {"type": "integer", "minimum": 1},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "title": {"type": "string"},
            "scenes": {
                "type": "array",
                "description": "The storyboard's scenes.",
                "items": {"type": "object"},
            },
        },
    },
    "RerenderEstimate": {
        "type": "object",
        "required": ["currency", "total", "stages", "scene", "version", "changed"],
        "properties": {
            "currency": {"const": "USD"},
            "total": {"type": "number", "minimum": 0},
            "stages": {"type": "object"},
            "scene": {"type": "integer", "minimum": 0},
            "version": {"type": "integer", "minimum": 2},
            "changed": {"type": "array", "items": {"enum": ["prompt", "narration"]}},
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
    "SessionCreate": {
        "type": "object",
        "required": ["api_key"],
        "properties": {"api_key": {"type": "string", "minLength": 1}},
    },
    "Session": {
        "type": "object",
        "required": ["tenant", "admin", "csrf_token", "expires_at"],
        "properties": {
            "tenant": {"type": "string"},
            "admin": {"type": "boolean"},
            "csrf_token": {"type": "string"},
            "expires_at": {"type": "string", "format": "date-time"},
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
            "feed": {
                "type": "object",
                "description": "users_due: users whose feed is due a refill (enough new "
                "interactions); generated_waiting: jobs made for feeds, not finished yet.",
                "required": ["users_due", "generated_waiting"],
                "properties": {
                    "users_due": {"type": "integer"},
                    "generated_waiting": {"type": "integer"},
                },
            },
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
                    "200": _json(
                        _ref("Health"),
                        "Healthy, or degraded: Redis away or no worker heartbeating.",
                    ),
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
                "summary": "The finished MP4 (`Range` requests supported); `?version=N` for "
                "an earlier version (default: the latest finished)",
                "parameters": [JOB_ID, VERSION],
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
                    **_errors(401, 404, 409, 410, 422),
                },
            }
        },
        "/v1/jobs/{job_id}/captions": {
            "get": {
                "summary": "The finished video's captions, as WebVTT",
                "parameters": [JOB_ID, VERSION],
                "responses": {
                    "200": {
                        "description": "The captions: one cue per short line of the speech.",
                        "content": {"text/vtt": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 404, 409, 410, 422),
                },
            }
        },
        "/v1/jobs/{job_id}/scenes": {
            "get": {
                "summary": "The scenes of the job's latest version: narration, prompt, timing, "
                "thumbnail and cost (empty until the script is written)",
                "parameters": [JOB_ID],
                "responses": {
                    "200": _json(_ref("SceneList"), "The scenes."),
                    **_errors(401, 404),
                },
            }
        },
        "/v1/jobs/{job_id}/scenes/{index}/thumbnail": {
            "get": {
                "summary": "A scene's thumbnail (JPEG), once its clip has landed",
                "parameters": [JOB_ID, SCENE_INDEX, VERSION],
                "responses": {"200": JPEG, **_errors(401, 404, 410, 422)},
            }
        },
        "/v1/jobs/{job_id}/scenes/{index}/rerender": {
            "post": {
                "summary": "Re-render one scene of a succeeded job with a new prompt and/or "
                "narration, re-buying only that clip (and the voice when the narration "
                "changed), then composite the next version of the video",
                "parameters": [JOB_ID, SCENE_INDEX],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SceneRerender")}},
                },
                "responses": {
                    "200": _json(_ref("RerenderEstimate"), "`dry_run`: the cost; nothing bought."),
                    "202": _json(_ref("Job"), "Requeued to make the next version."),
                    **_errors(400, 401, 404, 409, 410, 413, 422),
                },
            }
        },
        "/v1/jobs/{job_id}/poster": {
            "get": {
                "summary": "The finished video's poster (JPEG, the video's size)",
                "parameters": [JOB_ID, VERSION],
                "responses": {"200": JPEG, **_errors(401, 404, 410, 422)},
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
                "summary": "The operator console (signs in by itself with `POST /v1/session`)",
                "security": PUBLIC,
                "responses": {
                    "200": {
                        "description": "The page (HTML).",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                },
            }
        },
        "/v1/session": {
            "post": {
                "summary": "Sign the console in: an API key for an HttpOnly session cookie",
                "description": "The cookie (`videoq_session`, SameSite=Strict) authenticates "
                "requests scoped exactly like the key. State-changing requests it "
                "authenticates must send the returned `csrf_token` as `X-CSRF-Token` and come "
                "from this server's pages (`Origin`).",
                "security": PUBLIC,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SessionCreate")}},
                },
                "responses": {
                    "201": _json(_ref("Session"), "Signed in; the cookie is set."),
                    **_errors(400, 401, 403, 413, 422),
                },
            },
            "get": {
                "summary": "Who the session cookie signs in, and its CSRF token",
                "security": [{"session": []}],
                "responses": {"200": _json(_ref("Session"), "Signed in."), **_errors(401)},
            },
            "delete": {
                "summary": "Sign out (CSRF-checked when signed in); the cookie is cleared",
                "security": PUBLIC,
                "responses": {"204": {"description": "Signed out."}, **_errors(403)},
            },
        },
        "/v1/schemas/events.json": {
            "get": {
                "summary": "The WebSocket messages (events, feed changes, stats) as JSON Schema",
                "security": PUBLIC,
                "responses": {
                    "200": {
                        "description": "JSON Schema 2020-12.",
                        "content": {"application/schema+json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/static/{name}": {
            "get": {
                "summary": "The console's files and the browser client (`/static/videoq.js`)",
                "security": PUBLIC,
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "The file (JavaScript, CSS, JSON, or types)."},
                    **_errors(404),
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


#: API keys and schedules (``/v1/keys``, ``/v1/schedules``): their answers.
KEY_AND_SCHEDULE_SCHEMAS: dict[str, Any] = {
    "Key": {
        "type": "object",
        "required": ["id", "prefix", "tenant", "scope", "created_at"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "prefix": {"type": "string", "description": "The key's first 10 characters."},
            "tenant": {"type": "string"},
            "scope": {"enum": ["tenant", "admin"]},
            "name": {"type": ["string", "null"]},
            "created_at": _TS,
            "last_used_at": {**_TS, "description": "To the minute."},
            "expires_at": _TS,
            "revoked_at": _TS,
            "links": {"type": "object"},
        },
    },
    "NewKey": {
        "allOf": [
            _ref("Key"),
            {
                "type": "object",
                "required": ["key"],
                "properties": {
                    "key": {
                        "type": "string",
                        "pattern": "^vq_",
                        "description": "The key itself: in this answer only, never again.",
                    }
                },
            },
        ]
    },
    "KeyList": {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "array", "items": _ref("Key")}},
    },
    "Schedule": {
        "type": "object",
        "required": ["id", "cron", "timezone", "job", "next_run_at", "skipped_ticks"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "name": {"type": ["string", "null"]},
            "cron": {"type": "string", "description": "Five fields, macros expanded."},
            "timezone": {"type": "string"},
            "job": {"type": "object", "description": "The POST /v1/jobs body each tick submits."},
            "next_run_at": _TS,
            "last_tick_at": {**_TS, "description": "The tick of the last job submitted."},
            "last_job_id": {"type": ["string", "null"], "format": "uuid"},
            "skipped_ticks": {
                "type": "integer",
                "minimum": 0,
                "description": "Ticks that made no job: missed while no worker ran (only the "
                "latest missed tick runs), or whose job was refused for good.",
            },
            "last_error": {
                "type": ["string", "null"],
                "description": "Why the last tick made no job (rate limit, budget, validation).",
            },
            "created_at": _TS,
            "links": {"type": "object"},
        },
    },
    "ScheduleList": {
        "type": "object",
        "required": ["data", "next_cursor"],
        "properties": {
            "data": {"type": "array", "items": _ref("Schedule")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
}


def _keys_and_schedules() -> dict[str, Any]:
    key_id = {
        "name": "key_id",
        "in": "path",
        "required": True,
        "description": "The key's id, or its 10-character prefix (`vq_…`).",
        "schema": {"type": "string"},
    }
    schedule_id = {
        "name": "schedule_id",
        "in": "path",
        "required": True,
        "description": "The schedule's id (a UUID).",
        "schema": {"type": "string"},
    }
    schedule = _json(_ref("Schedule"), "The schedule.")
    return {
        "/v1/keys": {
            "post": {
                "summary": "Create an API key for a tenant (admin); the key is in this answer only",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("KeyCreate")}},
                },
                "responses": {
                    "201": _json(_ref("NewKey"), "Created."),
                    **_errors(400, 401, 403, 413, 422),
                },
            },
            "get": {
                "summary": "API keys, newest first, by prefix: never a key (admin)",
                "parameters": [
                    {
                        "name": "tenant",
                        "in": "query",
                        "description": "Only this tenant's.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 100},
                    },
                    {
                        "name": "include_revoked",
                        "in": "query",
                        "schema": {"enum": ["true", "false"]},
                    },
                ],
                "responses": {"200": _json(_ref("KeyList"), "Keys."), **_errors(401, 403, 422)},
            },
        },
        "/v1/keys/{key_id}": {
            "delete": {
                "summary": "Revoke a key (admin): refused from the next request on, by every "
                "API process; 409 for the last working admin key",
                "parameters": [key_id],
                "responses": {
                    "200": _json(_ref("Key"), "Revoked."),
                    **_errors(401, 403, 404, 409),
                },
            }
        },
        "/v1/schedules": {
            "post": {
                "summary": "Create a recurring job: a POST /v1/jobs body, a cron expression and "
                "an IANA time zone; one job per tick",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ScheduleCreate")}},
                },
                "responses": {
                    "201": _json(_ref("Schedule"), "Created."),
                    **_errors(400, 401, 409, 413, 422),
                },
            },
            "get": {
                "summary": "The tenant's schedules, newest first",
                "parameters": PAGE,
                "responses": {
                    "200": _json(_ref("ScheduleList"), "One page."),
                    **_errors(401, 422),
                },
            },
        },
        "/v1/schedules/{schedule_id}": {
            "get": {
                "summary": "One schedule",
                "parameters": [schedule_id],
                "responses": {"200": schedule, **_errors(401, 404)},
            },
            "delete": {
                "summary": "Delete a schedule; the jobs it made stay",
                "parameters": [schedule_id],
                "responses": {
                    "204": {"description": "Deleted."},
                    **_errors(401, 404),
                },
            },
        },
    }


WEBSOCKETS = {
    "/v1/jobs/{job_id}/events": "A snapshot, then every later event of the job in `seq` order "
    "(`/v1/schemas/events.json`); "
    "`?after=SEQ` resumes. Auth: `Authorization` header or `?token=`. Close codes: 1000 done, "
    "4400 bad `after`, 4401 bad key, 4404 unknown job (or another tenant's), 4408 too slow. "
    "`preview` events carry `data` (`#/components/schemas/PreviewEvent`): the storyboard "
    "after the script, a thumbnail as each clip lands, the poster of the finished video.",
    "/v1/events": "Every event of the caller's tenant (dashboards), each with its "
    "`tenant_seq`; `?after=TSEQ` replays exactly what was missed. Auth as above. Beside "
    'job events it carries `{"type": "feed", "change": "refilled" | "ready" | "failed", '
    '"user_id", ...}` when a user\'s feed changes, and with `?stats=1` a `stats` message '
    "(queue and worker figures) at once and every 5 s. Messages: `/v1/schemas/events.json`.",
}


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once per process)."""
    schema = JobCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = {**schema.pop("$defs", {}), "JobCreate": schema, **SCHEMAS}
    schemas["TenantUpdate"] = TenantUpdate.model_json_schema()
    schemas["InteractionCreate"] = InteractionCreate.model_json_schema()
    schemas["KeyCreate"] = KeyCreate.model_json_schema()
    scheduled = ScheduleCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    scheduled.pop("$defs", None)
    for field in ("run_at", "delay_s"):  # refused in a schedule: its jobs start at their ticks
        scheduled["properties"].pop(field)
    schemas |= {"ScheduleCreate": scheduled, **KEY_AND_SCHEDULE_SCHEMAS}
    schemas["SceneRerender"] = SceneRerender.model_json_schema()
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
    paths = {**_operations(), **_keys_and_schedules()}
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
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "videoq_session",
                    "description": "The console's session (`POST /v1/session`), scoped like "
                    "its key; state-changing requests also need `X-CSRF-Token`.",
                },
            },
        },
        "security": BEARER,
        "x-websockets": WEBSOCKETS,
        "x-event-schema": "/v1/schemas/events.json",
    }


async def route(request: Request) -> Response:
    """``GET /openapi.json`` (no key needed: it holds nothing secret)."""
    return JSONResponse(document())
