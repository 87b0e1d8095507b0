"""artifact expiry: when a finished job's files were deleted from the artifact store

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("artifacts_expired_at", sa.DateTime(timezone=True)))
    # The sweep looks for finished jobs whose files are still kept, oldest first: this index
    # holds only those, so it stays small however many jobs have expired.
    op.create_index(
        "jobs_artifacts_unexpired",
        "jobs",
        ["finished_at"],
        postgresql_where=sa.text("finished_at IS NOT NULL AND artifacts_expired_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("jobs_artifacts_unexpired", table_name="jobs")
    op.drop_column("jobs", "artifacts_expired_at")
