"""Audit entries say which key sealed them: NULL for a plain SHA-256 entry.

Recorded per entry, not per database, so a log written before NBENV_AUDIT_KEY was set
stays verifiable as it is, and the first sealed entry seals everything before it.

Revision ID: 0003_audit_key
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_audit_key"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("key_id", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("key_id")
