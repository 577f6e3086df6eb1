"""The schema. Alembic migrations in migrations/versions/ must produce exactly this."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

SHA = String(40)
IMAGE = String(128)
TIME = String(32)  # ISO 8601 UTC text: stable across databases, hashed into the audit chain
USER = String(64)

versions = Table(
    "versions",
    metadata,
    Column("image", IMAGE, primary_key=True),
    Column("sha", SHA, primary_key=True),
    Column("tests_passed", Boolean, nullable=False),
    Column("created_at", TIME, nullable=False),
    Column("recorded_by", USER, nullable=False),
    Column("subject", Text),
    Column("branch", String(255)),
    Column("build_id", String(64)),
    Column("report", JSON),
    Column("revoked_at", TIME),
    Column("revoked_by", USER),
    Column("revoked_reason", Text),
)

environments = Table(
    "environments",
    metadata,
    Column("image", IMAGE, primary_key=True),
    Column("env", String(16), primary_key=True),
    Column("sha", SHA),
    Column("generation", Integer, nullable=False),
    Column("updated_at", TIME),
    Column("updated_by", USER),
)

pointer_history = Table(
    "pointer_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("image", IMAGE, nullable=False),
    Column("env", String(16), nullable=False),
    Column("old_sha", SHA),
    Column("new_sha", SHA, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("at", TIME, nullable=False),
    Column("actor", USER, nullable=False),
    Column("operation_id", String(36)),
    UniqueConstraint("image", "env", "generation", name="uq_pointer_generation"),
)

verdicts = Table(
    "verdicts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("image", IMAGE, nullable=False),
    Column("sha", SHA, nullable=False),
    Column("user_id", USER, nullable=False),
    Column("approved", Boolean, nullable=False),
    Column("reason", Text),
    Column("at", TIME, nullable=False),
    # Set when the version is revoked: approvals given before that no longer count, nor
    # rejections their author had withdrawn (bot.domain.policy.kept_by_revocation).
    Column("void", Boolean, nullable=False, default=False),
    Index("ix_verdicts_image_sha", "image", "sha"),
)

freezes = Table(
    "freezes",
    metadata,
    Column("image", IMAGE, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("frozen_by", USER, nullable=False),
    Column("frozen_at", TIME, nullable=False),
)

operations = Table(
    "operations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("image", IMAGE, nullable=False),
    Column("actor", USER, nullable=False),
    Column("status", String(16), nullable=False),  # pending | done | failed
    Column("steps", JSON, nullable=False),
    Column("created_at", TIME, nullable=False),
    Column("updated_at", TIME, nullable=False),
    Column("error", Text),
    Index("ix_operations_status", "status"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", TIME, nullable=False),
    Column("actor", USER, nullable=False),
    Column("action", String(32), nullable=False),
    Column("image", IMAGE),
    Column("sha", SHA),
    Column("outcome", String(16), nullable=False),
    Column("details", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # The ID of the audit key whose HMAC `hash` is; NULL: a plain SHA-256 entry.
    Column("key_id", String(16)),
    Index("ix_audit_image_sha", "image", "sha"),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

processed_events = Table(
    "processed_events",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("at", TIME, nullable=False),
    Column("result", JSON),
)

slack_threads = Table(
    "slack_threads",
    metadata,
    Column("image", IMAGE, primary_key=True),
    Column("sha", SHA, primary_key=True),
    Column("channel", String(32), nullable=False),
    Column("ts", String(32)),  # known once the root message is delivered
    Column("state", JSON, nullable=False),  # what the root shows: status, steps, build id...
    Column("status_rank", Integer, nullable=False),
    Column("updated_at", TIME, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dedupe_key", String(255), nullable=False, unique=True),
    Column("method", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    # Replies and root updates wait for the thread's root: its ts is filled in at send time.
    Column("thread_image", IMAGE),
    Column("thread_sha", SHA),
    Column("status", String(16), nullable=False),  # pending | sent | dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", TIME, nullable=False),
    Column("last_error", Text),
    Column("created_at", TIME, nullable=False),
    Column("sent_at", TIME),
    Column("response", JSON),
    Index("ix_outbox_pending", "status", "next_attempt_at"),
    Index("ix_outbox_thread", "thread_image", "thread_sha"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dedupe_key", String(255), nullable=False, unique=True),
    Column("kind", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # queued | running | done | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("available_at", TIME, nullable=False),
    Column("created_at", TIME, nullable=False),
    Column("finished_at", TIME),
    Column("error", Text),
    Index("ix_jobs_queue", "status", "available_at"),
)

instances = Table(
    "instances",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("image", IMAGE, nullable=False),
    Column("env", String(16), nullable=False),
    Column("sha", SHA, nullable=False),
    Column("requested_by", USER, nullable=False),
    Column("created_at", TIME, nullable=False),
    Column("backend", String(16), nullable=False),
    Column("url", Text),
    Column("state", String(16), nullable=False),  # starting | running | stopped | failed
    Column("details", JSON, nullable=False),
    Column("stopped_at", TIME),
    Index("ix_instances_image_sha", "image", "sha"),
)
