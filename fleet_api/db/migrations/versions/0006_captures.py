"""captured samples (issue 14): one row per (device, sample id), the data a file beside it

Revision ID: 0006_captures
Revises: 0005_alerts
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006_captures'
down_revision = '0005_alerts'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A new table only: plain create_table and create_index (no batch rebuild of a table that others reference).
    op.create_table('captures',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('sample_id', sa.String(length=32), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('camera', sa.String(length=64), nullable=True),
    sa.Column('taken_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('shadow_version', sa.String(length=64), nullable=True),
    sa.Column('outputs', sa.JSON(), nullable=False),
    sa.Column('content_type', sa.String(length=32), nullable=False),
    sa.Column('width', sa.Integer(), nullable=True),
    sa.Column('height', sa.Integer(), nullable=True),
    sa.Column('faces_blurred', sa.Boolean(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_id', 'sample_id', name='uq_captures_device_sample'),
    sqlite_autoincrement=True,  # ids never reused after a delete (browsers cache a sample's data by its id)
    )
    op.create_index('ix_captures_device_id', 'captures', ['device_id'])
    op.create_index('ix_captures_model', 'captures', ['model'])
    op.create_index('ix_captures_taken_at', 'captures', ['taken_at'])


def downgrade() -> None:
    op.drop_index('ix_captures_taken_at', table_name='captures')
    op.drop_index('ix_captures_model', table_name='captures')
    op.drop_index('ix_captures_device_id', table_name='captures')
    op.drop_table('captures')
