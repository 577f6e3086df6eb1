"""The schema. Alembic migrations in migrations/versions/ must produce exactly this.

Every text column stores text as both databases can hold it (see `storable`), so a NUL
character in a reason, a commit subject or a build's failure detail is stored with a
visible stand-in instead of failing the write on PostgreSQL. JSON columns need nothing:
both databases keep `\\u0000` and lone surrogates in JSON text as escapes.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

metadata = MetaData()

# NUL: PostgreSQL text cannot hold it. Surrogates: a Python str holds one only when it came
# from a lone `\udXXX` JSON escape, and no database encoding can (UnicodeEncodeError).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"  # U+FFFD, the character Unicode reserves for "unrepresentable"


def storable(value: str) -> str:
    """VALUE with every character no database can store replaced by U+FFFD.

    Other control characters are stored as they are: rendering them is the reader's job.
    """
    return _UNSTORABLE.sub(REPLACEMENT, value)


def storable_json(value: Any) -> Any:
    """VALUE (JSON-able) with every string in it made `storable`: for JSON the store also
    reads inside with SQL (PostgreSQL's `->>` cannot turn `\\u0000` into text)."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable_json(key): storable_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable_json(item) for item in value]
    return value


class StoredString(TypeDecorator[str]):
    """VARCHAR whose values are made `storable` on the way in (in filters too)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return storable(value) if isinstance(value, str) else value


class StoredText(StoredString):
    """TEXT whose values are made `storable` on the way in."""

    impl = Text
    cache_ok = True


SHA = StoredString(40)
IMAGE = StoredString(128)
TIME = StoredString(32)  # ISO 8601 UTC text: stable across databases, hashed into the audit chain
USER = StoredString(64)

versions = Table(
    "versions",
    metadata,
    Column("image", IMAGE, primary_key=True),
    Column("sha", SHA, primary_key=True),
    Column("tests_passed", Boolean, nullable=False),
    Column("created_at", TIME, nullable=False),
    Column("recorded_by", USER, nullable=False),
    Column("subject", StoredText),
    Column("branch", StoredString(255)),
    Column("build_id", StoredString(64)),
    Column("report", JSON),
    Column("revoked_at", TIME),
    Column("revoked_by", USER),
    Column("revoked_reason", StoredText),
    # `versions IMAGE`, newest first, a page at a time (keyset on created_at, sha).
    Index("ix_versions_image_created", "image", "created_at", "sha"),
)

environments = Table(
    "environments",
    metadata,
    Column("image", IMAGE, primary_key=True),
    Column("env", StoredString(16), primary_key=True),
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
    Column("env", StoredString(16), nullable=False),
    Column("old_sha", SHA),
    Column("new_sha", SHA, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("at", TIME, nullable=False),
    Column("actor", USER, nullable=False),
    Column("operation_id", StoredString(36)),
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
    Column("reason", StoredText),
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
    Column("reason", StoredText, nullable=False),
    Column("frozen_by", USER, nullable=False),
    Column("frozen_at", TIME, nullable=False),
)

operations = Table(
    "operations",
    metadata,
    Column("id", StoredString(36), primary_key=True),
    Column("kind", StoredString(32), nullable=False),
    Column("image", IMAGE, nullable=False),
    Column("actor", USER, nullable=False),
    Column("status", StoredString(16), nullable=False),  # pending | done | failed
    Column("steps", JSON, nullable=False),
    Column("created_at", TIME, nullable=False),
    Column("updated_at", TIME, nullable=False),
    Column("error", StoredText),
    Index("ix_operations_status", "status"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", TIME, nullable=False),
    Column("actor", USER, nullable=False),
    Column("action", StoredString(32), nullable=False),
    Column("image", IMAGE),
    Column("sha", SHA),
    Column("outcome", StoredString(16), nullable=False),
    Column("details", JSON, nullable=False),
    Column("prev_hash", StoredString(64), nullable=False),
    Column("hash", StoredString(64), nullable=False),
    # The ID of the audit key whose HMAC `hash` is; NULL: a plain SHA-256 entry.
    Column("key_id", StoredString(16)),
    Index("ix_audit_image_sha", "image", "sha"),
    # `history IMAGE`, newest first, a page at a time (keyset on seq).
    Index("ix_audit_image_seq", "image", "seq"),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", StoredString(64), nullable=False),
)

processed_events = Table(
    "processed_events",
    metadata,
    Column("key", StoredString(255), primary_key=True),
    Column("at", TIME, nullable=False),
    Column("result", JSON),
)

slack_threads = Table(
    "slack_threads",
    metadata,
    Column("image", IMAGE, primary_key=True),
    Column("sha", SHA, primary_key=True),
    Column("channel", StoredString(32), nullable=False),
    Column("ts", StoredString(32)),  # known once the root message is delivered
    Column("state", JSON, nullable=False),  # what the root shows: status, steps, build id...
    Column("status_rank", Integer, nullable=False),
    Column("updated_at", TIME, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dedupe_key", StoredString(255), nullable=False, unique=True),
    Column("method", StoredString(64), nullable=False),
    Column("payload", JSON, nullable=False),
    # Replies and root updates wait for the thread's root: its ts is filled in at send time.
    Column("thread_image", IMAGE),
    Column("thread_sha", SHA),
    Column("status", StoredString(16), nullable=False),  # pending | sent | dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", TIME, nullable=False),
    Column("last_error", StoredText),
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
    Column("dedupe_key", StoredString(255), nullable=False, unique=True),
    Column("kind", StoredString(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", StoredString(16), nullable=False),  # queued | running | done | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("available_at", TIME, nullable=False),
    Column("created_at", TIME, nullable=False),
    Column("finished_at", TIME),
    Column("error", StoredText),
    Index("ix_jobs_queue", "status", "available_at"),
)

instances = Table(
    "instances",
    metadata,
    Column("name", StoredString(64), primary_key=True),
    Column("image", IMAGE, nullable=False),
    Column("env", StoredString(16), nullable=False),
    Column("sha", SHA, nullable=False),
    Column("requested_by", USER, nullable=False),
    Column("created_at", TIME, nullable=False),
    Column("backend", StoredString(16), nullable=False),
    Column("url", StoredText),
    Column("state", StoredString(16), nullable=False),  # starting | running | stopped | failed
    Column("details", JSON, nullable=False),
    Column("stopped_at", TIME),
    Index("ix_instances_image_sha", "image", "sha"),
)
