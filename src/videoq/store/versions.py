"""A job's scenes and the versions of its video, as the API reads and changes them: its
checkpoints (each version's are named for it, :mod:`videoq.pipeline.versions`) and the guarded
move of a succeeded job back onto the queue for a per-scene re-render.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from videoq.store.tables import StageCheckpoint


async def outputs(session: AsyncSession, job_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    """Every checkpoint of the job (completed stages of every version, and notes), by name."""
    rows = await session.execute(
        select(StageCheckpoint.stage, StageCheckpoint.output).where(
            StageCheckpoint.job_id == job_id
        )
    )
    return {stage: output for stage, output in rows.all()}
