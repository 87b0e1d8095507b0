"""PostgreSQL, the record of truth: the only package that talks to it (SQLAlchemy and asyncpg).

tables       the schema, as models
engine       engine, sessions, migrations, what a failing database raises, outages
jobs         jobs: creation, tenant-scoped reads, every guarded state transition
grouped      a worker's hot writes, grouped across its jobs, on raw asyncpg
liveness     workers' session locks, and the jobs of workers whose lock is gone
checkpoints  a stage's outputs and paid work in progress, for one attempt
events       the archive of every job's events
apikeys      API keys: issued, authenticated, listed, revoked
schedules    recurring jobs: their rows, the due ones claimed by one ticker at a time
tenants      tenants' fair shares, as admins set them
webhooks     outbound deliveries, tenant secrets, inbound receipts
spend        tenants' budgets: paid calls reserved and settled
interactions end users' interactions with finished videos (the feed's intake)
feed         embeddings (pgvector), preferences, refill claims, briefs made, feed items
"""

from videoq.store.engine import (
    DATABASE_ERRORS,
    OUTAGE_SOURCES,
    DatabaseUnreachable,
    async_url,
    check_migrated,
    create_engine,
    driver_dsn,
    head_revision,
    migrate,
    outage,
    ping,
    sessionmaker,
)
from videoq.store.tables import (
    ApiKey,
    InboundWebhook,
    Job,
    JobEvent,
    Purchase,
    Schedule,
    StageCheckpoint,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSecret,
)

__all__ = [
    "DATABASE_ERRORS",
    "OUTAGE_SOURCES",
    "ApiKey",
    "DatabaseUnreachable",
    "InboundWebhook",
    "Job",
    "JobEvent",
    "Purchase",
    "Schedule",
    "StageCheckpoint",
    "Tenant",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookSecret",
    "async_url",
    "check_migrated",
    "create_engine",
    "driver_dsn",
    "head_revision",
    "migrate",
    "outage",
    "ping",
    "sessionmaker",
]
