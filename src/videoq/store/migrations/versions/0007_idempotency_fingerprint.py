"""idempotency fingerprint: the request an Idempotency-Key first came with

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Jobs created before this revision have none: a key of theirs sent again is taken as the
    # same request, as it was.
    op.add_column("jobs", sa.Column("idempotency_fingerprint", sa.String(64)))


def downgrade() -> None:
    op.drop_column("jobs", "idempotency_fingerprint")
