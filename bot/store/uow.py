"""The unit of work: one transaction, with the repositories the service layer needs.

`Store.write()` is the only way to change state. An audited write locks the audit
head first, which serialises the hash chain (and, being the first lock taken, can't
deadlock with the environment rows it updates later).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Text, and_, cast, func, insert, or_, select, update

from bot.domain.audit import AuditEntry, AuditKey, UnreadableEntry, entry_hash
from bot.domain.errors import BadInput, Conflict, NbenvError
from bot.domain.model import Freeze, ImageState, Pointer, Version
from bot.domain.names import Env, check_sha_ref, is_full_sha, short
from bot.domain.operations import Plan
from bot.domain.policy import Verdict, kept_by_revocation, standing_verdicts
from bot.store import tables as t
from bot.store.database import READ_ONLY

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Store:
    def __init__(
        self, engine: Engine, clock: Clock = utcnow, *, audit_key: AuditKey | None = None
    ) -> None:
        """AUDIT_KEY: seals every audit entry written here (HMAC); None: plain SHA-256."""
        self.engine = engine
        self.clock = clock
        self.audit_key = audit_key

    def now(self) -> str:
        return iso(self.clock())

    @contextmanager
    def read(self) -> Iterator[Tx]:
        with self.engine.connect() as connection:
            connection.execution_options(**{READ_ONLY: True})
            yield Tx(connection, self)
            connection.rollback()

    @contextmanager
    def write(self, *, audited: bool = True) -> Iterator[Tx]:
        with self.engine.begin() as connection:
            tx = Tx(connection, self)
            if audited:
                tx.lock_audit_head()
            yield tx


class Tx:
    """Repositories bound to one connection/transaction."""

    def __init__(self, connection: Connection, store: Store) -> None:
        self.connection = connection
        self.store = store
        self.now = store.now()

    # -- generic -------------------------------------------------------------------------

    def insert_ignore(self, table: t.Table, values: dict[str, Any]) -> bool:
        """Insert unless the key exists; True when this call inserted the row."""
        # RETURNING, not rowcount: psycopg reports -1 for INSERT … ON CONFLICT DO NOTHING.
        statement = _insert_ignore(self.connection.dialect.name, table, returning=True)
        return self.connection.execute(statement, values).first() is not None

    def insert_ignore_many(self, table: t.Table, rows: list[dict[str, Any]]) -> None:
        """Insert each row unless its key exists, in one round trip (insertmanyvalues)."""
        if rows:
            self.connection.execute(_insert_ignore(self.connection.dialect.name, table), rows)

    def claim(self, key: str, result: dict[str, Any] | None = None) -> bool:
        """Record that input KEY was handled; False when it already was (a retry)."""
        return self.insert_ignore(
            t.processed_events, {"key": key[:255], "at": self.now, "result": result}
        )

    def claimed(self, key: str) -> dict[str, Any] | None:
        row = self.connection.execute(
            select(t.processed_events.c.result).where(t.processed_events.c.key == key[:255])
        ).first()
        return None if row is None else (row.result or {})

    # -- versions ------------------------------------------------------------------------

    def get_version(self, image: str, sha: str) -> Version | None:
        row = self.connection.execute(
            select(t.versions).where(t.versions.c.image == image, t.versions.c.sha == sha)
        ).first()
        return None if row is None else Version(**row._mapping)

    def list_versions(self, image: str) -> list[Version]:
        rows = self.connection.execute(
            select(t.versions)
            .where(t.versions.c.image == image)
            .order_by(t.versions.c.created_at.desc())
        )
        return [Version(**row._mapping) for row in rows]

    def resolve_sha(self, image: str, ref: str) -> str:
        """A full SHA of a known version of IMAGE from a full SHA or a 7+ digit prefix."""
        ref = check_sha_ref(ref)
        if is_full_sha(ref):
            if self.get_version(image, ref) is None:
                raise BadInput(f"{image} has no version {short(ref)}: see `versions {image}`")
            return ref
        matches = list(
            self.connection.execute(
                select(t.versions.c.sha).where(
                    t.versions.c.image == image, t.versions.c.sha.like(ref + "%")
                )
            ).scalars()
        )
        if not matches:
            raise BadInput(f"{image} has no version starting with {ref}: see `versions {image}`")
        if len(matches) > 1:
            listed = ", ".join(sorted(m[:12] for m in matches))
            raise BadInput(f"{ref} is ambiguous for {image}: it matches {listed}")
        return matches[0]

    def record_version(self, version: Version) -> Version:
        """Insert a version, or update its test result and report when it is built again."""
        existing = self.get_version(version.image, version.sha)
        if existing is None:
            values = asdict(version)
            self.connection.execute(insert(t.versions).values(**values))
            return version
        changes = {
            key: value
            for key, value in {
                "tests_passed": version.tests_passed,
                "report": version.report,
                "subject": version.subject or existing.subject,
                "branch": version.branch or existing.branch,
                "build_id": version.build_id or existing.build_id,
            }.items()
            if value is not None
        }
        self.connection.execute(
            update(t.versions)
            .where(t.versions.c.image == version.image, t.versions.c.sha == version.sha)
            .values(**changes)
        )
        return self.get_version(version.image, version.sha)  # type: ignore[return-value]

    def revoke(self, image: str, sha: str, *, by: str, reason: str | None) -> None:
        """Mark SHA revoked; the approvals it had no longer count (see kept_by_revocation)."""
        self.connection.execute(
            update(t.versions)
            .where(t.versions.c.image == image, t.versions.c.sha == sha)
            .values(revoked_at=self.now, revoked_by=by, revoked_reason=reason or "rolled back")
        )
        ids, history = self._verdict_history(image, sha)
        kept = kept_by_revocation(history)
        voided = [row_id for row_id, stays in zip(ids, kept, strict=True) if not stays]
        if voided:
            self.connection.execute(
                update(t.verdicts).where(t.verdicts.c.id.in_(voided)).values(void=True)
            )

    def clear_revocation(self, image: str, sha: str) -> None:
        """SHA is approved afresh: it is no longer shown as revoked (the log keeps that it was)."""
        self.connection.execute(
            update(t.versions)
            .where(t.versions.c.image == image, t.versions.c.sha == sha)
            .values(revoked_at=None, revoked_by=None, revoked_reason=None)
        )

    # -- environments --------------------------------------------------------------------

    def ensure_environments(self, image: str) -> None:
        for env in Env:
            self.insert_ignore(
                t.environments, {"image": image, "env": env.value, "sha": None, "generation": 0}
            )

    def image_state(self, image: str) -> ImageState:
        rows = self.connection.execute(
            select(t.environments).where(t.environments.c.image == image)
        )
        pointers = {
            Env(row.env): Pointer(
                env=Env(row.env),
                sha=row.sha,
                generation=row.generation,
                updated_at=row.updated_at,
                updated_by=row.updated_by,
            )
            for row in rows
        }
        return ImageState(image=image, pointers=pointers, freeze=self.freeze(image))

    def apply(self, plan: Plan, *, actor: str, operation_id: str | None = None) -> None:
        """Move the pointers of PLAN, each only if its generation is still the one planned."""
        self.ensure_environments(plan.image)
        for change in plan.changes:
            result = self.connection.execute(
                update(t.environments)
                .where(
                    t.environments.c.image == plan.image,
                    t.environments.c.env == change.env.value,
                    t.environments.c.generation == change.expected_generation,
                )
                .values(
                    sha=change.new,
                    generation=change.expected_generation + 1,
                    updated_at=self.now,
                    updated_by=actor,
                )
            )
            if result.rowcount != 1:
                current = self.image_state(plan.image)
                raise Conflict(
                    f"the environments of {plan.image} changed while you were working "
                    f"({change.env.value} is now {short(current.sha(change.env))}): "
                    f"nothing was changed; check `status {plan.image}` and try again"
                )
            self.connection.execute(
                insert(t.pointer_history).values(
                    image=plan.image,
                    env=change.env.value,
                    old_sha=change.old,
                    new_sha=change.new,
                    generation=change.expected_generation + 1,
                    at=self.now,
                    actor=actor,
                    operation_id=operation_id,
                )
            )
        if plan.revoke:
            self.revoke(plan.image, plan.revoke, by=actor, reason=plan.details.get("reason"))

    def pointer_history(self, image: str) -> list[dict[str, Any]]:
        rows = self.connection.execute(
            select(t.pointer_history)
            .where(t.pointer_history.c.image == image)
            .order_by(t.pointer_history.c.id)
        )
        return [dict(row._mapping) for row in rows]

    # -- verdicts ------------------------------------------------------------------------

    def verdicts(self, image: str, sha: str) -> list[Verdict]:
        """The latest standing verdict of each person on SHA (voided ones ignored)."""
        return standing_verdicts(self._verdict_history(image, sha)[1])

    def _verdict_history(self, image: str, sha: str) -> tuple[list[int], list[Verdict]]:
        """The row IDs and verdicts on SHA that are not void, oldest first."""
        rows = self.connection.execute(
            select(t.verdicts)
            .where(
                t.verdicts.c.image == image,
                t.verdicts.c.sha == sha,
                t.verdicts.c.void.is_(False),
            )
            .order_by(t.verdicts.c.id)
        ).all()
        return [row.id for row in rows], [
            Verdict(row.user_id, row.approved, row.reason, row.at) for row in rows
        ]

    def add_verdict(
        self, image: str, sha: str, user: str, *, approved: bool, reason: str | None
    ) -> None:
        self.connection.execute(
            insert(t.verdicts).values(
                image=image,
                sha=sha,
                user_id=user,
                approved=approved,
                reason=reason,
                at=self.now,
                void=False,
            )
        )

    # -- freezes -------------------------------------------------------------------------

    def freeze(self, image: str) -> Freeze | None:
        row = self.connection.execute(select(t.freezes).where(t.freezes.c.image == image)).first()
        return None if row is None else Freeze(row.reason, row.frozen_by, row.frozen_at)

    def set_freeze(self, image: str, *, by: str, reason: str) -> None:
        self.connection.execute(
            insert(t.freezes).values(image=image, reason=reason, frozen_by=by, frozen_at=self.now)
        )

    def clear_freeze(self, image: str) -> None:
        self.connection.execute(t.freezes.delete().where(t.freezes.c.image == image))

    # -- audit ---------------------------------------------------------------------------

    def lock_audit_head(self) -> tuple[int, str]:
        statement = select(t.audit_head.c.seq, t.audit_head.c.hash).where(t.audit_head.c.id == 1)
        if self.connection.dialect.name == "postgresql":
            statement = statement.with_for_update()
        row = self.connection.execute(statement).first()
        if row is None:
            # Someone deleted it: appending would start a second chain. Nothing is recorded
            # (so nothing changes) until an operator has looked.
            raise NbenvError(
                "the audit log's head row is missing, so nothing can be recorded: "
                "run `nbenv audit verify` and restore the database"
            )
        return row.seq, row.hash

    def append_audit(
        self,
        *,
        actor: str,
        action: str,
        image: str | None,
        sha: str | None,
        outcome: str = "ok",
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        seq, prev_hash = self.lock_audit_head()
        key = self.store.audit_key
        # Hashed as stored: the text columns replace what no database can hold, and the
        # details lose lone surrogates (from non-UTF-8 argv or `\udXXX` escapes), which
        # the hash's UTF-8 could not encode either.
        actor, action, outcome = t.storable(actor), t.storable(action), t.storable(outcome)
        image = None if image is None else t.storable(image)
        sha = None if sha is None else t.storable(sha)
        details = json.loads(t.storable(json.dumps(details or {}, ensure_ascii=False)))
        entry = AuditEntry(
            seq=seq + 1,
            at=self.now,
            actor=actor,
            action=action,
            image=image,
            sha=sha,
            outcome=outcome,
            details=details or {},
            prev_hash=prev_hash,
            key_id=key.key_id if key else None,
        )
        digest = entry_hash(
            prev_hash=prev_hash,
            seq=entry.seq,
            at=entry.at,
            actor=actor,
            action=action,
            image=image,
            sha=sha,
            outcome=outcome,
            details=entry.details,
            key=key,
        )
        self.connection.execute(insert(t.audit_log).values(**{**asdict(entry), "hash": digest}))
        self.connection.execute(
            update(t.audit_head).where(t.audit_head.c.id == 1).values(seq=entry.seq, hash=digest)
        )
        return AuditEntry(**{**asdict(entry), "hash": digest})

    def audit_entries(
        self, *, image: str | None = None, sha: str | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        """Entries of IMAGE (and concerning SHA), oldest first; an entry whose details
        cannot be read shows that instead of failing the whole answer."""
        statement = _audit_rows()
        conditions = []
        if image is not None:
            conditions.append(t.audit_log.c.image == image)
        if sha is not None and is_full_sha(sha):
            # Filed under SHA, or naming it in its details (a rollback that revoked it is
            # filed under its target): the text match only narrows, concerned_shas decides.
            conditions.append(
                or_(t.audit_log.c.sha == sha, cast(t.audit_log.c.details, Text).contains(sha))
            )
        elif sha is not None:
            conditions.append(t.audit_log.c.sha.like(sha + "%"))
        if conditions:
            statement = statement.where(and_(*conditions))
        if limit:
            inner = statement.order_by(t.audit_log.c.seq.desc()).limit(limit).subquery()
            rows = sorted(self.connection.execute(select(inner)), key=lambda r: r.seq)
        else:
            rows = list(self.connection.execute(statement.order_by(t.audit_log.c.seq)))
        entries = []
        for row in rows:
            entry = _audit_entry(row)
            if isinstance(entry, UnreadableEntry):
                values = {**row._mapping, "details": {"unreadable": entry.problem}}
                entry = AuditEntry(**values)
            entries.append(entry)
        if sha is not None and is_full_sha(sha):
            entries = [entry for entry in entries if sha in entry.concerned_shas()]
        return entries

    def audit_chain(self) -> Iterator[AuditEntry | UnreadableEntry]:
        """Every entry, oldest first, as written (for `audit verify`): streamed, and a row
        that cannot be read is reported as such, not raised."""
        statement = _audit_rows().order_by(t.audit_log.c.seq).execution_options(yield_per=500)
        result = self.connection.execute(statement)
        try:
            for row in result:
                yield _audit_entry(row)
        finally:  # a check that stops early closes the (server-side) cursor here
            result.close()

    def audit_head(self) -> tuple[int, str] | None:
        """The last seq and hash written; None when the head row was deleted."""
        row = self.connection.execute(
            select(t.audit_head.c.seq, t.audit_head.c.hash).where(t.audit_head.c.id == 1)
        ).first()
        return None if row is None else (row.seq, row.hash)

    def audit_count(self) -> int:
        return self.connection.execute(select(func.count()).select_from(t.audit_log)).scalar_one()

    # -- outbox and jobs -----------------------------------------------------------------

    def enqueue_message(
        self,
        dedupe_key: str,
        method: str,
        payload: dict[str, Any],
        *,
        thread: tuple[str, str] | None = None,
    ) -> bool:
        """Queue a Slack Web API call; THREAD=(image, sha) threads it under that SHA's root.

        False when a message with this key was queued before (a retried input).
        """
        return self.insert_ignore(t.outbox, self._message_row(dedupe_key, method, payload, thread))

    def enqueue_messages(
        self, messages: list[tuple[str, str, dict[str, Any], tuple[str, str] | None]]
    ) -> None:
        """Queue several (dedupe_key, method, payload, thread) calls in one round trip;
        those whose key was queued before are left out."""
        self.insert_ignore_many(t.outbox, [self._message_row(*message) for message in messages])

    def _message_row(
        self,
        dedupe_key: str,
        method: str,
        payload: dict[str, Any],
        thread: tuple[str, str] | None,
    ) -> dict[str, Any]:
        return {
            "dedupe_key": dedupe_key[:255],
            "method": method,
            "payload": payload,
            "thread_image": thread[0] if thread else None,
            "thread_sha": thread[1] if thread else None,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": self.now,
            "created_at": self.now,
        }

    def job(self, dedupe_key: str) -> dict[str, Any] | None:
        row = self.connection.execute(
            select(t.jobs).where(t.jobs.c.dedupe_key == dedupe_key[:255])
        ).first()
        return None if row is None else dict(row._mapping)

    def enqueue_job(self, dedupe_key: str, kind: str, payload: dict[str, Any]) -> bool:
        """Queue slow work for the worker; False when this key was queued before."""
        return self.insert_ignore(
            t.jobs,
            {
                "dedupe_key": dedupe_key[:255],
                "kind": kind,
                "payload": payload,
                "status": "queued",
                "attempts": 0,
                "available_at": self.now,
                "created_at": self.now,
            },
        )

    # -- operation journal (sagas) -------------------------------------------------------

    def start_operation(
        self, operation_id: str, kind: str, image: str, actor: str, steps: list[dict[str, Any]]
    ) -> None:
        self.connection.execute(
            insert(t.operations).values(
                id=operation_id,
                kind=kind,
                image=image,
                actor=actor,
                status="pending",
                steps=steps,
                created_at=self.now,
                updated_at=self.now,
            )
        )

    def operation(self, operation_id: str) -> dict[str, Any] | None:
        row = self.connection.execute(
            select(t.operations).where(t.operations.c.id == operation_id)
        ).first()
        return None if row is None else dict(row._mapping)

    def pending_operations(self) -> list[str]:
        return list(
            self.connection.execute(
                select(t.operations.c.id)
                .where(t.operations.c.status != "done")
                .order_by(t.operations.c.created_at)
            ).scalars()
        )

    def complete_step(self, operation_id: str, index: int) -> None:
        operation = self.operation(operation_id)
        assert operation is not None
        steps = [dict(step) for step in operation["steps"]]
        steps[index]["done"] = True
        self.connection.execute(
            update(t.operations)
            .where(t.operations.c.id == operation_id)
            .values(steps=steps, updated_at=self.now)
        )

    def fail_operation(self, operation_id: str, error: str) -> None:
        self.connection.execute(
            update(t.operations)
            .where(t.operations.c.id == operation_id)
            .values(status="failed", error=error, updated_at=self.now)
        )

    def finish_operation(self, operation_id: str) -> None:
        self.connection.execute(
            update(t.operations)
            .where(t.operations.c.id == operation_id)
            .values(status="done", error=None, updated_at=self.now)
        )

    # -- instances -----------------------------------------------------------------------

    def add_instance(
        self,
        *,
        name: str,
        image: str,
        env: str,
        sha: str,
        requested_by: str,
        backend: str,
        url: str | None,
        state: str,
        details: dict[str, Any],
    ) -> None:
        self.connection.execute(
            insert(t.instances).values(
                name=name,
                image=image,
                env=env,
                sha=sha,
                requested_by=requested_by,
                created_at=self.now,
                backend=backend,
                url=url,
                state=state,
                details=details,
            )
        )

    def instance(self, name: str) -> dict[str, Any] | None:
        row = self.connection.execute(select(t.instances).where(t.instances.c.name == name)).first()
        return None if row is None else dict(row._mapping)

    def instances(
        self, *, image: str | None = None, sha: str | None = None, active: bool = False
    ) -> list[dict[str, Any]]:
        statement = select(t.instances).order_by(t.instances.c.created_at)
        if image is not None:
            statement = statement.where(t.instances.c.image == image)
        if sha is not None:
            statement = statement.where(t.instances.c.sha == sha)
        if active:
            statement = statement.where(t.instances.c.state.in_(("starting", "running")))
        return [dict(row._mapping) for row in self.connection.execute(statement)]

    def update_instance(self, name: str, **values: Any) -> None:
        self.connection.execute(
            update(t.instances).where(t.instances.c.name == name).values(**values)
        )


def _audit_rows() -> Any:
    """The audit log with its details as the text stored, parsed by _audit_entry: a row
    edited to hold invalid JSON must not fail the read."""
    columns = [c for c in t.audit_log.c if c.name != "details"]
    return select(*columns, cast(t.audit_log.c.details, Text).label("details"))


def _audit_entry(row: Any) -> AuditEntry | UnreadableEntry:
    values = dict(row._mapping)
    try:
        values["details"] = json.loads(values["details"])
    except (TypeError, ValueError, RecursionError):
        return UnreadableEntry(row.seq, "its details are not valid JSON: the row was edited")
    return AuditEntry(**values)


@functools.cache
def _insert_ignore(dialect: str, table: t.Table, *, returning: bool = False) -> Any:
    """INSERT … ON CONFLICT DO NOTHING, built once per table: values come as parameters.

    RETURNING the key tells whether the row was inserted (psycopg reports rowcount -1).
    """
    # Imported here: each dialect's module is heavy and a process uses only one.
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        statement = postgresql.insert(table).on_conflict_do_nothing()
    elif dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        statement = sqlite.insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - only the two supported databases
        raise RuntimeError(f"unsupported database {dialect}")
    return statement.returning(next(iter(table.primary_key.columns))) if returning else statement
