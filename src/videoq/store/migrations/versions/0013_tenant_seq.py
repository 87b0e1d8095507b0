"""the console: each archived event's tenant and its number in the tenant's feed (tenant feed
replay), and the console's sign-in sessions

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_console_sessions_key_id", "console_sessions", ["key_id"])
    op.create_index("ix_console_sessions_expires_at", "console_sessions", ["expires_at"])
    op.add_column("job_events", sa.Column("tenant", sa.String(100), nullable=True))
    op.add_column("job_events", sa.Column("tenant_seq", sa.Integer(), nullable=True))
    op.create_index(
        "job_events_tenant_seq",
        "job_events",
        ["tenant", "tenant_seq"],
        postgresql_where=sa.text("tenant_seq IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_table("console_sessions")
    op.drop_index("job_events_tenant_seq", table_name="job_events")
    op.drop_column("job_events", "tenant_seq")
    op.drop_column("job_events", "tenant")
