"""faults and operations: attempt leftovers recorded before they exist, fleet counters for /metrics

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leftovers",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(length=1024), nullable=False),
        sa.Column("created_at", service.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["merge_jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "attempt"),
    )
    op.create_table(
        "fleet_counters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", "label"),
    )
    _backfill_counters()


def _backfill_counters() -> None:
    """The totals of the jobs that succeeded before counters existed (one scan, here, never again)."""
    from service.counters import totals_of_result

    connection = op.get_bind()
    jobs = sa.table("merge_jobs", sa.column("status", sa.String), sa.column("result", sa.JSON))
    totals: dict[tuple[str, str], float] = {}
    for (result,) in connection.execute(sa.select(jobs.c.result).where(jobs.c.status == "succeeded")):
        for key, value in totals_of_result(result if isinstance(result, dict) else {}).items():
            totals[key] = totals.get(key, 0.0) + value
    artifacts = sa.table("artifacts", sa.column("size", sa.BigInteger))
    uploaded = connection.execute(sa.select(sa.func.coalesce(sa.func.sum(artifacts.c.size), 0))).scalar()
    totals[("bytes", "uploaded")] = float(uploaded or 0)
    counters = sa.table("fleet_counters", sa.column("name"), sa.column("label"), sa.column("value"))
    if totals:
        op.bulk_insert(counters, [{"name": n, "label": lab, "value": v} for (n, lab), v in sorted(totals.items())])


def downgrade() -> None:
    op.drop_table("fleet_counters")
    op.drop_table("leftovers")
