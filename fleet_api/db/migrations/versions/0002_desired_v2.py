"""desired state v2: device configuration, profiles, models per device, rollouts per model, telemetry per model

Revision ID: 0002_desired_v2
Revises: 0001
Create Date: 2026-12-01

Telemetry minutes of schema 1 were keyed by one bundle per device; schema 2 keys them by model and version. The
old rollups (a lossy, per-minute metric) are dropped rather than guessed into the new key.

A device's schema 1 desired state named one model: it becomes that device's model assignment, and its stored
desired state is rewritten in schema 2 under the same revision (the device gets it on its next hello; nothing is
republished on its own). The schema 1 runtime config had other fields and is not carried over.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = '0002_desired_v2'
down_revision = '0001'
branch_labels = None
depends_on = None


def _telemetry_columns(v2: bool) -> list:
    key = ([sa.Column('model', sa.String(length=128), nullable=False),
            sa.Column('model_version', sa.String(length=64), nullable=False)] if v2 else
           [sa.Column('model_sha256', sa.String(length=64), nullable=False),
            sa.Column('model_version', sa.String(length=64), nullable=True)])
    return [
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('device_id', sa.String(length=64), nullable=False),
        sa.Column('minute', sa.DateTime(timezone=True), nullable=False),
        *key,
        sa.Column('provider', sa.String(length=64), nullable=True),
        sa.Column('messages', sa.Integer(), nullable=False),
        sa.Column('requests', sa.BigInteger(), nullable=False),
        sa.Column('errors', sa.BigInteger(), nullable=False),
        sa.Column('latency_messages', sa.Integer(), nullable=False),
        sa.Column('latency_ms_p50_sum', sa.Float(), nullable=False),
        sa.Column('latency_ms_p95_sum', sa.Float(), nullable=False),
        sa.Column('latency_ms_p99_sum', sa.Float(), nullable=False),
        sa.Column('latency_ms_p95_max', sa.Float(), nullable=True),
        sa.Column('cpu_percent_sum', sa.Float(), nullable=False),
        sa.Column('memory_mb_max', sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    ]


def _create_telemetry(v2: bool) -> None:
    unique = (sa.UniqueConstraint('device_id', 'minute', 'model', 'model_version', name='uq_telemetry_minute') if v2
              else sa.UniqueConstraint('device_id', 'minute', 'model_sha256'))
    op.create_table('telemetry_minutes', *_telemetry_columns(v2), unique)
    with op.batch_alter_table('telemetry_minutes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_telemetry_minutes_device_id'), ['device_id'], unique=False)
        batch_op.create_index('ix_telemetry_minutes_minute', ['minute'], unique=False)


def _drop_telemetry() -> None:
    with op.batch_alter_table('telemetry_minutes', schema=None) as batch_op:
        batch_op.drop_index('ix_telemetry_minutes_minute')
        batch_op.drop_index(batch_op.f('ix_telemetry_minutes_device_id'))
    op.drop_table('telemetry_minutes')


def upgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('config', sa.JSON(), nullable=True))
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('runtime', sa.JSON(), nullable=True))
    op.create_table('device_models',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('bundle_sha256', sa.String(length=64), nullable=False),
    sa.Column('runtime', sa.JSON(), nullable=True),
    sa.Column('rollout_id', sa.Integer(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('device_id', 'model')
    )
    op.create_table('profiles',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('selector', sa.JSON(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    _drop_telemetry()
    _create_telemetry(v2=True)
    _desired_v1_to_v2()


def _desired_v1_to_v2() -> None:
    devices = sa.table('devices', sa.column('id', sa.String), sa.column('desired', sa.JSON))
    models = sa.table('device_models', sa.column('device_id', sa.String), sa.column('model', sa.String),
                      sa.column('bundle_sha256', sa.String), sa.column('runtime', sa.JSON),
                      sa.column('rollout_id', sa.Integer), sa.column('updated_at', sa.DateTime(timezone=True)))
    conn = op.get_bind()
    now = dt.datetime.now(dt.UTC)
    for device_id, desired in conn.execute(sa.select(devices.c.id, devices.c.desired)).all():
        if not desired or 'model' not in desired:
            continue
        model, rollout_id = desired.get('model'), desired.get('rollout_id')
        v2: dict = {'schema': 2, 'revision': desired.get('revision', 0), 'models': {}}
        if model:
            conn.execute(models.insert().values(device_id=device_id, model=model['name'], bundle_sha256=model['sha256'],
                                                runtime=None, rollout_id=rollout_id, updated_at=now))
            v2['models'][model['name']] = {'bundle': model, 'rollout_id': rollout_id}
        conn.execute(devices.update().where(devices.c.id == device_id).values(desired=v2))


def downgrade() -> None:
    _drop_telemetry()
    _create_telemetry(v2=False)
    op.drop_table('profiles')
    op.drop_table('device_models')
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_column('runtime')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('config')
