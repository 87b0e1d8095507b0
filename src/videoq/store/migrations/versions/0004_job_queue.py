"""job queue: each job remembers the arq queue it belongs to

Workers' reconcilers re-enqueue only their own queue's jobs, so several queues (or several
deployments) can share one database without taking each other's work.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column(
            "queue", sa.String(200), server_default=sa.text("'videoq:queue'"), nullable=False
        ),
    )
    op.create_index(
        "jobs_queue_waiting",
        "jobs",
        ["queue", "created_at"],
        postgresql_where=sa.text("status IN ('queued', 'scheduled', 'retrying')"),
    )


def downgrade() -> None:
    op.drop_index("jobs_queue_waiting", table_name="jobs")
    op.drop_column("jobs", "queue")
