"""scheduling: held jobs, tenant weights and limits, worker-time usage

Revision ID: 0004
Revises: 0003

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HELD = sa.text("status = 'queued' AND published_at IS NULL")
DISPATCHED = sa.text("status = 'queued' AND published_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("weight", sa.Float(), server_default=sa.text("1.0"), nullable=False))
        batch_op.add_column(sa.Column("max_queued_jobs", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_running_jobs", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("gpu_seconds_per_day", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("rate_limit", sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column("share_seconds", sa.Float(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(sa.Column("share_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("last_job_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("order_key", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("request_id", sa.String(length=128), nullable=True))
        batch_op.drop_index("ix_jobs_queue_order")
        batch_op.create_index(
            "ix_jobs_held",
            ["queue", "tenant_id", "order_key"],
            unique=False,
            postgresql_where=HELD,
            sqlite_where=HELD,
        )
        batch_op.create_index(
            "ix_jobs_dispatched",
            ["queue", "tenant_id"],
            unique=False,
            postgresql_where=DISPATCHED,
            sqlite_where=DISPATCHED,
        )
        batch_op.create_index("ix_jobs_tenant_status", ["tenant_id", "status"], unique=False)
        batch_op.create_index("ix_jobs_kind_finished", ["kind", "finished_at"], unique=False)
    op.create_table(
        "tenant_usage",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("worker_seconds", sa.Float(), nullable=False),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_usage_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "day", name=op.f("pk_tenant_usage")),
    )


def downgrade() -> None:
    op.drop_table("tenant_usage")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_kind_finished")
        batch_op.drop_index("ix_jobs_tenant_status")
        batch_op.drop_index("ix_jobs_dispatched")
        batch_op.drop_index("ix_jobs_held")
        batch_op.create_index(
            "ix_jobs_queue_order", ["status", "queue", "priority", "created_at"], unique=False
        )
        batch_op.drop_column("request_id")
        batch_op.drop_column("order_key")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        for column in (
            "last_job_seq", "share_at", "share_seconds", "rate_limit", "gpu_seconds_per_day",
            "max_running_jobs", "max_queued_jobs", "weight",
        ):  # fmt: skip
            batch_op.drop_column(column)
