"""Initial schema: versions, environments, approvals, freezes, operations, audit, Slack delivery.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SHA = sa.String(40)
IMAGE = sa.String(128)
TIME = sa.String(32)
USER = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "versions",
        sa.Column("image", IMAGE, primary_key=True),
        sa.Column("sha", SHA, primary_key=True),
        sa.Column("tests_passed", sa.Boolean, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("recorded_by", USER, nullable=False),
        sa.Column("subject", sa.Text),
        sa.Column("branch", sa.String(255)),
        sa.Column("build_id", sa.String(64)),
        sa.Column("report", sa.JSON),
        sa.Column("revoked_at", TIME),
        sa.Column("revoked_by", USER),
        sa.Column("revoked_reason", sa.Text),
    )
    op.create_table(
        "environments",
        sa.Column("image", IMAGE, primary_key=True),
        sa.Column("env", sa.String(16), primary_key=True),
        sa.Column("sha", SHA),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("updated_at", TIME),
        sa.Column("updated_by", USER),
    )
    op.create_table(
        "pointer_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("image", IMAGE, nullable=False),
        sa.Column("env", sa.String(16), nullable=False),
        sa.Column("old_sha", SHA),
        sa.Column("new_sha", SHA, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("actor", USER, nullable=False),
        sa.Column("operation_id", sa.String(36)),
        sa.UniqueConstraint("image", "env", "generation", name="uq_pointer_generation"),
    )
    op.create_table(
        "verdicts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("image", IMAGE, nullable=False),
        sa.Column("sha", SHA, nullable=False),
        sa.Column("user_id", USER, nullable=False),
        sa.Column("approved", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("at", TIME, nullable=False),
        sa.Column("void", sa.Boolean, nullable=False),
    )
    op.create_index("ix_verdicts_image_sha", "verdicts", ["image", "sha"])
    op.create_table(
        "freezes",
        sa.Column("image", IMAGE, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("frozen_by", USER, nullable=False),
        sa.Column("frozen_at", TIME, nullable=False),
    )
    op.create_table(
        "operations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("image", IMAGE, nullable=False),
        sa.Column("actor", USER, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_operations_status", "operations", ["status"])
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("actor", USER, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("image", IMAGE),
        sa.Column("sha", SHA),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_image_sha", "audit_log", ["image", "sha"])
    audit_head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    # The one row every audited transaction locks: it serialises the hash chain.
    op.bulk_insert(audit_head, [{"id": 1, "seq": 0, "hash": "0" * 64}])
    op.create_table(
        "processed_events",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("at", TIME, nullable=False),
        sa.Column("result", sa.JSON),
    )
    op.create_table(
        "slack_threads",
        sa.Column("image", IMAGE, primary_key=True),
        sa.Column("sha", SHA, primary_key=True),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("ts", sa.String(32)),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("status_rank", sa.Integer, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dedupe_key", sa.String(255), nullable=False, unique=True),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("thread_image", IMAGE),
        sa.Column("thread_sha", SHA),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", TIME, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("sent_at", TIME),
        sa.Column("response", sa.JSON),
    )
    op.create_index("ix_outbox_pending", "outbox", ["status", "next_attempt_at"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dedupe_key", sa.String(255), nullable=False, unique=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("available_at", TIME, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("finished_at", TIME),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_jobs_queue", "jobs", ["status", "available_at"])
    op.create_table(
        "instances",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("image", IMAGE, nullable=False),
        sa.Column("env", sa.String(16), nullable=False),
        sa.Column("sha", SHA, nullable=False),
        sa.Column("requested_by", USER, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("url", sa.Text),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("stopped_at", TIME),
    )
    op.create_index("ix_instances_image_sha", "instances", ["image", "sha"])


def downgrade() -> None:
    for table in (
        "instances",
        "jobs",
        "outbox",
        "slack_threads",
        "processed_events",
        "audit_head",
        "audit_log",
        "operations",
        "freezes",
        "verdicts",
        "pointer_history",
        "environments",
        "versions",
    ):
        op.drop_table(table)
