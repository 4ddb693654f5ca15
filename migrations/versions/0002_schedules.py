"""schedules

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 05:54:14.831184
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("cron", sa.String(length=120), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("template", sa.JSON(), nullable=False),
        sa.Column("overlap", sa.String(length=8), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("next_fire_at", service.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_fire_at", service.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("created_at", service.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_schedules_tenant_name"),
    )
    with op.batch_alter_table("schedules", schema=None) as batch_op:
        batch_op.create_index("ix_schedules_due", ["paused", "next_fire_at"], unique=False)

    with op.batch_alter_table("merge_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("schedule_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("fire_time", service.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_merge_jobs_schedule_id"), ["schedule_id"], unique=False)
        batch_op.create_unique_constraint("uq_merge_jobs_schedule_fire", ["schedule_id", "fire_time"])
        batch_op.create_foreign_key(
            "fk_merge_jobs_schedule_id", "schedules", ["schedule_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("merge_jobs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_merge_jobs_schedule_id", type_="foreignkey")
        batch_op.drop_constraint("uq_merge_jobs_schedule_fire", type_="unique")
        batch_op.drop_index(batch_op.f("ix_merge_jobs_schedule_id"))
        batch_op.drop_column("fire_time")
        batch_op.drop_column("schedule_id")

    with op.batch_alter_table("schedules", schema=None) as batch_op:
        batch_op.drop_index("ix_schedules_due")

    op.drop_table("schedules")
