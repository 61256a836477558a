"""shadow-mode rollouts: the rollout's shadow settings, a candidate beside an assigned bundle, the device's numbers

Revision ID: 0004_shadow
Revises: 0003_encryption
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004_shadow'
down_revision = '0003_encryption'
branch_labels = None
depends_on = None

COLUMNS = (("rollouts", "shadow"), ("device_models", "shadow"), ("rollout_devices", "shadow"))


def upgrade() -> None:
    for table, column in COLUMNS:  # plain ADD COLUMN: a batch rebuild of `rollouts` on SQLite would cascade
        op.add_column(table, sa.Column(column, sa.JSON(), nullable=True))


def downgrade() -> None:
    for table, column in COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
