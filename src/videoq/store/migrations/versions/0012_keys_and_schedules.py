"""keys and schedules: API keys get a name and an expiry (POST /v1/keys); recurring jobs
(POST /v1/schedules), each row holding its next tick

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    stamp = sa.DateTime(timezone=True)
    op.add_column("api_keys", sa.Column("name", sa.String(100)))
    op.add_column("api_keys", sa.Column("expires_at", stamp))
    op.create_table(
        "schedules",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        # The arq queue of the API that took it: only that queue's workers fire it.
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("cron", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("job", JSONB, nullable=False),
        sa.Column("next_run_at", stamp, nullable=False),
        sa.Column("last_tick_at", stamp),
        sa.Column("last_job_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="SET NULL")),
        sa.Column("skipped_ticks", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", stamp, nullable=False, server_default=sa.text("now()")),
    )
    op.create_index("schedules_due", "schedules", ["queue", "next_run_at"])
    op.create_index(
        "schedules_tenant_created",
        "schedules",
        ["tenant", sa.text("created_at DESC"), sa.text("id DESC")],
    )


def downgrade() -> None:
    op.drop_table("schedules")
    op.drop_column("api_keys", "expires_at")
    op.drop_column("api_keys", "name")
