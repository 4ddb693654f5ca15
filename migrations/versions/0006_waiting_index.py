"""a partial index of the jobs waiting to be sent: each submit's send claim finds them without a scan

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

WAITING = "status = 'queued' AND enqueued_at IS NULL"  # service.models.WAITING as of this revision


def upgrade() -> None:
    op.create_index(
        "ix_merge_jobs_waiting", "merge_jobs", ["tenant_id", "created_at", "id"],
        postgresql_where=sa.text(WAITING), sqlite_where=sa.text(WAITING),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_merge_jobs_waiting", table_name="merge_jobs")
