"""tenants: each tenant's fair share of the workers; the ETA a job was given at submit

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Only tenants an admin configured have a row; every other tenant has weight 1, no limit.
    op.create_table(
        "tenants",
        sa.Column("tenant", sa.String(100), primary_key=True),
        sa.Column("weight", sa.Float, nullable=False, server_default=sa.text("1")),
        sa.Column("max_running", sa.Integer),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.CheckConstraint("weight > 0", name="tenants_weight_positive"),
        sa.CheckConstraint("max_running IS NULL OR max_running >= 0", name="tenants_max_running"),
    )
    op.add_column("jobs", sa.Column("eta_at_submit_s", sa.Float))


def downgrade() -> None:
    op.drop_column("jobs", "eta_at_submit_s")
    op.drop_table("tenants")
