"""feed: end users' interactions with finished videos, the videos' embeddings (pgvector, HNSW),
users' preference vectors, the briefs made for them and their personalised feeds

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import VECTOR
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The embeddings' size (text-embedding-3-small's, and the offline embedder's).
DIMENSIONS = 1536
_TYPES = "'view', 'like', 'save', 'share', 'skip'"
_KINDS = "'existing_video', 'generated_video'"

NO_PGVECTOR = (
    "this PostgreSQL server has no pgvector extension (`vector`), which videoq's feed needs "
    "for its embeddings: install pgvector on the server (https://github.com/pgvector/pgvector, "
    "e.g. the postgresql-16-pgvector package), or leave VIDEOQ_DATABASE_URL unset for the "
    "embedded PostgreSQL, which ships it; then run `videoq migrate` again"
)


def require_pgvector(bind: sa.Connection, extension: str = "vector") -> None:
    """Refuse, with :data:`NO_PGVECTOR`, a server on which ``extension`` cannot be created."""
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = :name"), {"name": extension}
    ).first()
    if available is None:
        raise RuntimeError(NO_PGVECTOR)


def upgrade() -> None:
    require_pgvector(op.get_bind())
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    now = sa.text("now()")
    stamp = sa.DateTime(timezone=True)
    op.create_table(
        "interactions",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column(
            "video_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("watched_s", sa.Float),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("fingerprint", sa.String(64)),
        sa.Column("created_at", stamp, nullable=False, server_default=now),
        sa.CheckConstraint(f"type IN ({_TYPES})", name="interactions_type_valid"),
    )
    # A user's history, and "has the user seen this video" for the feed's nearest neighbours.
    op.create_index("interactions_user", "interactions", ["tenant", "user_id", "video_id"])
    op.create_index(
        "interactions_idempotency",
        "interactions",
        ["tenant", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_table(
        "video_embeddings",
        sa.Column(
            "job_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("embedding", VECTOR(DIMENSIONS), nullable=False),
        sa.Column("created_at", stamp, nullable=False, server_default=now),
    )
    op.create_index(
        "video_embeddings_hnsw",
        "video_embeddings",
        ["embedding"],
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )
    op.create_index("video_embeddings_tenant", "video_embeddings", ["tenant", "model"])
    op.create_table(
        "feed_users",
        sa.Column("tenant", sa.String(100), primary_key=True),
        sa.Column("user_id", sa.String(200), primary_key=True),
        sa.Column("interactions", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("pending", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("preference", VECTOR(DIMENSIONS)),
        sa.Column("model", sa.String(200)),
        sa.Column("preference_updated_at", stamp),
        sa.Column("refilled_at", stamp),
        sa.Column("claimed_at", stamp),
    )
    op.create_index("feed_users_pending", "feed_users", ["pending"])
    op.create_table(
        "feed_briefs",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("brief", JSONB, nullable=False),
        sa.Column("similarity", sa.Float),
        sa.Column("job_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="SET NULL")),
        sa.Column("created_at", stamp, nullable=False, server_default=now),
        sa.UniqueConstraint("tenant", "user_id", "fingerprint", name="feed_briefs_once"),
    )
    op.create_index("feed_briefs_user", "feed_briefs", ["tenant", "user_id", "created_at"])
    op.create_table(
        "feed_items",
        sa.Column("tenant", sa.String(100), primary_key=True),
        sa.Column("user_id", sa.String(200), primary_key=True),
        sa.Column(
            "job_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("similarity", sa.Float, nullable=False),
        sa.Column("created_at", stamp, nullable=False, server_default=now),
        sa.Column("announced_at", stamp),
        sa.CheckConstraint(f"kind IN ({_KINDS})", name="feed_items_kind_valid"),
    )
    op.create_index(
        "feed_items_order",
        "feed_items",
        ["tenant", "user_id", sa.text("similarity DESC"), "job_id"],
    )
    op.create_index(
        "feed_items_unannounced",
        "feed_items",
        ["job_id"],
        postgresql_where=sa.text("kind = 'generated_video' AND announced_at IS NULL"),
    )
    op.add_column("jobs", sa.Column("embedded_at", stamp))
    op.create_index(
        "jobs_unembedded",
        "jobs",
        ["finished_at"],
        postgresql_where=sa.text("status = 'succeeded' AND embedded_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("jobs_unembedded", table_name="jobs")
    op.drop_column("jobs", "embedded_at")
    for table in ("feed_items", "feed_briefs", "feed_users", "video_embeddings", "interactions"):
        op.drop_table(table)
    # The extension stays: other schemas on the server may use it.
