"""Indexes for reading a long history a page at a time, newest first.

`versions IMAGE` pages by (created_at, sha) and `history IMAGE` by seq, within one image:
without these, each page sorts all of the image's versions or scans the whole log.

Revision ID: 0004_history_paging
Revises: 0003_audit_key
"""

from alembic import op

revision = "0004_history_paging"
down_revision = "0003_audit_key"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_versions_image_created", "versions", ["image", "created_at", "sha"])
    op.create_index("ix_audit_image_seq", "audit_log", ["image", "seq"])


def downgrade() -> None:
    op.drop_index("ix_audit_image_seq", table_name="audit_log")
    op.drop_index("ix_versions_image_created", table_name="versions")
