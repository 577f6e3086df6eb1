"""Index the outbox by thread: the relay asks for a thread's messages on every new commit.

Sent messages stay in the outbox as the record of what Slack was told, so without the
index that question scans a table that only grows.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_thread", "outbox", ["thread_image", "thread_sha"])


def downgrade() -> None:
    op.drop_index("ix_outbox_thread", table_name="outbox")
