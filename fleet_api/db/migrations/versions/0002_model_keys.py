"""model data keys, sealed under the master key

Revision ID: 0002_model_keys
Revises: 0002_desired_v2
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_model_keys"
down_revision = "0002_desired_v2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_keys",
        sa.Column("key_id", sa.String(length=64), primary_key=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_model_keys_name", "model_keys", ["name"])


def downgrade() -> None:
    op.drop_index("ix_model_keys_name", table_name="model_keys")
    op.drop_table("model_keys")
