"""versions: each job's video version (raised by every per-scene re-render) and the list of
what each version changed

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("version", sa.Integer, nullable=False, server_default=sa.text("1"))
    )
    op.add_column(
        "jobs",
        sa.Column("versions", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    )
    op.create_check_constraint("jobs_version_positive", "jobs", "version >= 1")


def downgrade() -> None:
    op.drop_constraint("jobs_version_positive", "jobs", type_="check")
    op.drop_column("jobs", "versions")
    op.drop_column("jobs", "version")
