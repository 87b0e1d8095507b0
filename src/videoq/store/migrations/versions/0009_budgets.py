"""budgets: tenants' daily and monthly spend budgets, the purchases reserved and settled
against them, each job's estimated cost, and the `awaiting_budget` job state

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATES = "'queued', 'scheduled', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'"
_WAITING = "'queued', 'scheduled', 'retrying'"


def _states(extra: str) -> None:
    op.drop_constraint("jobs_status_valid", "jobs", type_="check")
    op.create_check_constraint("jobs_status_valid", "jobs", f"status IN ({_STATES}{extra})")
    op.drop_index("jobs_queue_waiting", table_name="jobs")
    op.create_index(
        "jobs_queue_waiting",
        "jobs",
        ["queue", "created_at"],
        postgresql_where=sa.text(f"status IN ({_WAITING}{extra})"),
    )


def upgrade() -> None:
    money = sa.Numeric(14, 6)
    op.add_column("tenants", sa.Column("daily_budget_usd", money))
    op.add_column("tenants", sa.Column("monthly_budget_usd", money))
    op.add_column(
        "tenants",
        sa.Column("reject_when_over_budget", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_check_constraint(
        "tenants_budgets_positive",
        "tenants",
        "(daily_budget_usd IS NULL OR daily_budget_usd >= 0)"
        " AND (monthly_budget_usd IS NULL OR monthly_budget_usd >= 0)",
    )
    # One row per paid call of a job, whatever the attempt: reserved before the call, settled
    # with its actual cost after (or released when the call bought nothing).
    op.create_table(
        "purchases",
        sa.Column("job_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default=sa.text("'reserved'")),
        sa.Column("reserved_usd", money, nullable=False),
        sa.Column("actual_usd", money),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("job_id", "key"),
        sa.CheckConstraint(
            "state IN ('reserved', 'settled', 'released')", name="purchases_state_valid"
        ),
    )
    op.create_index("purchases_tenant_created", "purchases", ["tenant", "created_at"])
    op.add_column("jobs", sa.Column("cost_estimate_usd", money))
    _states(", 'awaiting_budget'")


def downgrade() -> None:
    op.execute("UPDATE jobs SET status = 'queued' WHERE status = 'awaiting_budget'")
    _states("")
    op.drop_column("jobs", "cost_estimate_usd")
    op.drop_index("purchases_tenant_created", table_name="purchases")
    op.drop_table("purchases")
    op.drop_constraint("tenants_budgets_positive", "tenants", type_="check")
    op.drop_column("tenants", "reject_when_over_budget")
    op.drop_column("tenants", "monthly_budget_usd")
    op.drop_column("tenants", "daily_budget_usd")
