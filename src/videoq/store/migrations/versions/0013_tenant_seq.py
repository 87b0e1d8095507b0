"""tenant feed replay: each archived event's tenant and its number in the tenant's feed

Revision ID: 0013
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job_events", sa.Column("tenant", sa.String(100), nullable=True))
    op.add_column("job_events", sa.Column("tenant_seq", sa.Integer(), nullable=True))
    op.create_index(
        "job_events_tenant_seq",
        "job_events",
        ["tenant", "tenant_seq"],
        postgresql_where=sa.text("tenant_seq IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("job_events_tenant_seq", table_name="job_events")
    op.drop_column("job_events", "tenant_seq")
    op.drop_column("job_events", "tenant")
