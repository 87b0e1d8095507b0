"""trace context: the traceparent of the request that created a job

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Jobs created before this revision have none: their attempts start traces of their own.
    op.add_column("jobs", sa.Column("traceparent", sa.String(100)))


def downgrade() -> None:
    op.drop_column("jobs", "traceparent")
