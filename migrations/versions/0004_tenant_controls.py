"""tenant controls: a tenant can be disabled; jobs are counted per tenant and status

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_merge_jobs_tenant_status", "merge_jobs", ["tenant_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_merge_jobs_tenant_status", table_name="merge_jobs")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("disabled")
