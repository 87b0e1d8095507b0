"""A job's scenes and the versions of its video, as the API reads and changes them: its
checkpoints (each version's are named for it, :mod:`videoq.pipeline.versions`) and the guarded
move of a succeeded job back onto the queue for a per-scene re-render.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import cast, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from videoq.store.jobs import REQUEUED
from videoq.store.tables import Job, StageCheckpoint
from videoq.types import JobStatus


async def outputs(session: AsyncSession, job_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    """Every checkpoint of the job (completed stages of every version, and notes), by name."""
    rows = await session.execute(
        select(StageCheckpoint.stage, StageCheckpoint.output).where(
            StageCheckpoint.job_id == job_id
        )
    )
    return {stage: output for stage, output in rows.all()}


async def requeue(session: AsyncSession, job: Job, change: dict[str, Any]) -> Job | None:
    """Put a succeeded ``job`` back on the queue to make its next version, as ``change``
    (an entry of its ``versions``) asks: one guarded UPDATE (still succeeded, still the
    version read, its files not expired), with a fresh retry budget. None when the guard
    failed (it changed meanwhile).

    The one move out of ``succeeded``, so it is not in :data:`videoq.types.TRANSITIONS`: no
    generic transition may revive a finished job."""
    stmt = (
        update(Job)
        .where(
            Job.id == job.id,
            Job.status == JobStatus.SUCCEEDED,
            Job.version == job.version,
            Job.artifacts_expired_at.is_(None),
        )
        .values(
            status=JobStatus.QUEUED,
            version=Job.version + 1,
            versions=Job.versions.op("||")(cast(literal(json.dumps([change])), JSONB)),
            stage=None,
            progress=0.0,
            heartbeat_at=None,
            # Its ETA error would be measured from the job's creation, not from this request.
            eta_at_submit_s=None,
            updated_at=datetime.now(UTC),
            **REQUEUED,
        )
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    updated = (await session.execute(stmt)).scalar_one_or_none()
    await session.commit()
    return updated
