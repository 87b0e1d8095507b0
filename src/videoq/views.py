"""How a job is shown to the outside: the API's responses and the webhooks' payloads
(DESIGN.md, ``GET /v1/jobs/{id}``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from videoq.store.tables import Job, Purchase
from videoq.types import TERMINAL, JobStatus


def _usd(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def cost_view(job: Job, purchases: Sequence[Purchase] | None) -> dict[str, Any]:
    """What the job was expected to cost and (with its purchases) what it cost: settled calls
    at their cost, calls in flight at their reservation (``reserved_usd``)."""
    view: dict[str, Any] = {"currency": "USD", "estimated_usd": _usd(job.cost_estimate_usd)}
    if purchases is None:
        return view
    live = [p for p in purchases if p.state != "released"]
    view["actual_usd"] = float(sum((p.actual_usd or Decimal(0) for p in live), Decimal(0)))
    view["reserved_usd"] = float(
        sum((p.reserved_usd for p in live if p.state == "reserved"), Decimal(0))
    )
    view["calls"] = [
        {
            "key": p.key, "stage": p.stage, "provider": p.provider, "model": p.model,
            "state": p.state, "reserved_usd": float(p.reserved_usd),
            "actual_usd": _usd(p.actual_usd),
        }
        for p in purchases
    ]  # fmt: skip
    return view


def job_view(
    job: Job,
    base_url: str = "",
    *,
    queue_position: int | None = None,
    eta_s: float | None = None,
    purchases: Sequence[Purchase] | None = None,
) -> dict[str, Any]:
    """The job as the API shows it (DESIGN.md, ``GET /v1/jobs/{id}``): ``queue_position`` and
    ``eta_s`` as estimated by the caller (null where none was); its cost as estimated at
    submit and, given its ``purchases``, as paid so far (each call, scenes apart)."""

    def ts(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    path = f"/v1/jobs/{job.id}"
    result = None
    if job.status == JobStatus.SUCCEEDED and job.result:
        expired = job.artifacts_expired_at
        result = {
            # An expired video is gone from the store: its URL would answer 410.
            "video_url": None if expired else f"{base_url}{path}/video",
            "poster_url": None if expired else f"{base_url}{path}/poster",
            "duration_s": job.result.get("duration_s"),
            "size_bytes": job.result.get("size_bytes"),
            "captions_url": (
                f"{base_url}{path}/captions" if job.result.get("captions") and not expired else None
            ),
        }
        if expired:
            result["expired_at"] = ts(expired)
    return {
        "id": str(job.id),
        "status": job.status,
        "stage": job.stage,
        "progress": round(job.progress, 2),
        "priority": job.priority,
        "attempts": job.attempts,
        "max_retries": job.max_retries,
        "history": job.history,
        "brief": job.brief,
        "run_at": ts(job.run_at),
        "created_at": ts(job.created_at),
        "started_at": ts(job.started_at),
        "finished_at": ts(job.finished_at),
        "worker_id": job.worker_id,
        "error": job.error,
        "result": result,
        "queue_position": queue_position,
        "eta_s": None if job.status in TERMINAL or eta_s is None else round(eta_s, 1),
        "cost": cost_view(job, purchases),
        "version": job.version,
        "versions": job.versions,
        "links": {
            "self": f"{base_url}{path}",
            "events": f"{base_url.replace('http', 'ws', 1)}{path}/events",
            "video": f"{base_url}{path}/video",
            "scenes": f"{base_url}{path}/scenes",
        },
    }
