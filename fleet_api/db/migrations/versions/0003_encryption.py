"""confidential models: device public keys (enrolled or pinned, revocable) and per-model encryption policy

Revision ID: 0003_encryption
Revises: 0002_model_keys
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_encryption"
down_revision = "0002_model_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (SQLite has it): a batch operation would rebuild `devices` on SQLite, and dropping the old
    # table cascades into device_models, losing every model assignment.
    op.add_column("devices", sa.Column("public_key", sa.String(length=64), nullable=True))
    op.add_column("devices", sa.Column("key_revoked", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "model_policies",
        sa.Column("name", sa.String(length=128), primary_key=True),
        sa.Column("require_encryption", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_policies")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("key_revoked")
        batch.drop_column("public_key")
