"""lifecycle: per-job heartbeats (crash recovery), attempt history and retry budget

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "jobs",
        sa.Column(
            "history", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False
        ),
    )
    op.add_column(
        "jobs", sa.Column("retry_base", sa.Integer(), server_default=sa.text("0"), nullable=False)
    )
    op.create_index(
        "jobs_running_heartbeat",
        "jobs",
        ["heartbeat_at"],
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index(
        "jobs_finished_at",
        "jobs",
        ["finished_at"],
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("jobs_finished_at", table_name="jobs")
    op.drop_index("jobs_running_heartbeat", table_name="jobs")
    op.drop_column("jobs", "retry_base")
    op.drop_column("jobs", "history")
    op.drop_column("jobs", "heartbeat_at")
