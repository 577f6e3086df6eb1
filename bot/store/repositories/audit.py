"""The audit log: a hash chain whose head row serialises writers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, fields
from typing import Any

from sqlalchemy import Connection, Text, and_, cast, func, insert, or_, select, update

from bot.domain.audit import AuditEntry, AuditKey, UnreadableEntry
from bot.domain.errors import NbenvError
from bot.domain.names import is_full_sha
from bot.domain.paging import Page, audit_cursor, check_limit, parse_audit_cursor
from bot.store import tables as t
from bot.store.repositories._base import Repository


class AuditLog(Repository):
    __slots__ = ("key",)

    def __init__(self, connection: Connection, now: str, key: AuditKey | None) -> None:
        super().__init__(connection, now)
        self.key = key  # seals every entry written (HMAC); None: plain SHA-256

    def lock_head(self) -> tuple[int, str]:
        """The last seq and hash, locked until the transaction ends (on PostgreSQL; SQLite
        holds the database's write lock already)."""
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

    def append(
        self,
        *,
        actor: str,
        action: str,
        image: str | None,
        sha: str | None,
        outcome: str = "ok",
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        seq, prev_hash = self.lock_head()
        key = self.key
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
        digest = entry.computed_hash(key)
        self.connection.execute(insert(t.audit_log).values(**{**asdict(entry), "hash": digest}))
        self.connection.execute(
            update(t.audit_head).where(t.audit_head.c.id == 1).values(seq=entry.seq, hash=digest)
        )
        return AuditEntry(**{**asdict(entry), "hash": digest})

    def entries(
        self, *, image: str | None = None, sha: str | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        """Entries of IMAGE (and concerning SHA), oldest first; an entry whose details
        cannot be read shows that instead of failing the whole answer."""
        statement = _audit_rows()
        conditions = _conditions(image, sha)
        if conditions:
            statement = statement.where(and_(*conditions))
        if limit:
            inner = statement.order_by(t.audit_log.c.seq.desc()).limit(limit).subquery()
            rows = sorted(self.connection.execute(select(inner)), key=lambda r: r.seq)
        else:
            rows = list(self.connection.execute(statement.order_by(t.audit_log.c.seq)))
        entries = [_readable(row) for row in rows]
        if sha is not None and is_full_sha(sha):
            entries = [entry for entry in entries if sha in entry.concerned_shas()]
        return entries

    def page(
        self,
        *,
        image: str | None = None,
        sha: str | None = None,
        limit: int,
        before: str | None = None,
    ) -> Page[AuditEntry]:
        """Entries of IMAGE (and concerning SHA, as `entries`), newest first: LIMIT of
        them, older than the one the cursor BEFORE names (from a previous page), or from
        the newest. Keyset paging on ix_audit_image_seq: each page costs the same however
        deep it is, and entries appended meanwhile do not shift the pages not yet seen."""
        limit = check_limit(limit)
        conditions = _conditions(image, sha)
        older = [] if before is None else [t.audit_log.c.seq < parse_audit_cursor(before)]
        newest_first = _audit_rows().where(*conditions, *older).order_by(t.audit_log.c.seq.desc())
        if sha is not None and is_full_sha(sha):
            # The SQL match only narrows (a SHA quoted in a reason matches too): every
            # candidate is checked to count exactly. An image's entries about one SHA are
            # few, so reading them all stays cheap.
            matching = [
                entry
                for entry in map(_readable, self.connection.execute(newest_first))
                if sha in entry.concerned_shas()
            ]
            items, more = matching[:limit], max(0, len(matching) - limit)
        else:
            # The page and how many entries there are from the cursor on, in one round trip
            # (the count reads only the index).
            matching = (
                select(func.count())
                .select_from(t.audit_log)
                .where(*conditions, *older)
                .scalar_subquery()
            )
            rows = self.connection.execute(
                newest_first.add_columns(matching.label("matching")).limit(limit)
            ).all()
            items = [_readable(row) for row in rows]
            more = rows[0].matching - len(items) if rows else 0
        return Page(items, more, audit_cursor(items[-1].seq) if more else None)

    def chain(self) -> Iterator[AuditEntry | UnreadableEntry]:
        """Every entry, oldest first, as written (for `audit verify`): streamed, and a row
        that cannot be read is reported as such, not raised."""
        # The fields in AuditEntry's order, read as plain tuples: at 100,000 entries the
        # per-row mapping a named row builds costs as much as hashing the entry.
        columns = [c for c in t.audit_log.c if c.name != "details"]
        by_name = {c.name: c for c in columns}
        by_name["details"] = cast(t.audit_log.c.details, Text)
        statement = (
            select(*(by_name[name] for name in _ENTRY_FIELDS))
            .order_by(t.audit_log.c.seq)
            .execution_options(yield_per=_STREAM_ROWS)
        )
        result = self.connection.execute(statement)
        loads = json.loads
        try:
            for fields in result:
                try:
                    details = loads(fields[_DETAILS])
                except (TypeError, ValueError, RecursionError):
                    yield UnreadableEntry(fields[0], _UNREADABLE)
                    continue
                yield AuditEntry(*fields[:_DETAILS], details, *fields[_DETAILS + 1 :])
        finally:  # a check that stops early closes the (server-side) cursor here
            result.close()

    def head(self) -> tuple[int, str] | None:
        """The last seq and hash written; None when the head row was deleted."""
        row = self.connection.execute(
            select(t.audit_head.c.seq, t.audit_head.c.hash).where(t.audit_head.c.id == 1)
        ).first()
        return None if row is None else (row.seq, row.hash)

    def count(self) -> int:
        return self.connection.execute(select(func.count()).select_from(t.audit_log)).scalar_one()


# AuditEntry's fields in order, as `chain` reads them; rows fetched per round trip.
_ENTRY_FIELDS = tuple(field.name for field in fields(AuditEntry))
_DETAILS = _ENTRY_FIELDS.index("details")
_STREAM_ROWS = 1000
_UNREADABLE = "its details are not valid JSON: the row was edited"


def _audit_rows() -> Any:
    """The audit log with its details as the text stored, parsed by _audit_entry: a row
    edited to hold invalid JSON must not fail the read."""
    columns = [c for c in t.audit_log.c if c.name != "details"]
    return select(*columns, cast(t.audit_log.c.details, Text).label("details"))


def _conditions(image: str | None, sha: str | None) -> list[Any]:
    """Where an entry of IMAGE concerning SHA may be (a full SHA: exact match decided by
    AuditEntry.concerned_shas; a prefix: the SHA it is filed under)."""
    conditions: list[Any] = []
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
    return conditions


def _readable(row: Any) -> AuditEntry:
    """The entry of ROW; one whose details cannot be read says so in its details."""
    entry = _audit_entry(row)
    if isinstance(entry, UnreadableEntry):
        return AuditEntry(**{**_entry_values(row), "details": {"unreadable": entry.problem}})
    return entry


def _entry_values(row: Any) -> dict[str, Any]:
    """The entry's fields of ROW (a page's row also holds how many entries match)."""
    mapping = row._mapping
    return {name: mapping[name] for name in _ENTRY_FIELDS}


def _audit_entry(row: Any) -> AuditEntry | UnreadableEntry:
    values = _entry_values(row)
    try:
        values["details"] = json.loads(values["details"])
    except (TypeError, ValueError, RecursionError):
        return UnreadableEntry(row.seq, _UNREADABLE)
    return AuditEntry(**values)
