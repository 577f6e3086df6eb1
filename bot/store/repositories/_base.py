"""What every repository shares: its transaction's connection and time, and the cached
INSERT … ON CONFLICT DO NOTHING."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Connection, Table


class Repository:
    """Statements on one aggregate's tables, run in the transaction of CONNECTION; NOW is
    the transaction's time (one per transaction, so its rows agree)."""

    __slots__ = ("connection", "now")

    def __init__(self, connection: Connection, now: str) -> None:
        self.connection = connection
        self.now = now

    def insert_ignore(self, table: Table, values: dict[str, Any]) -> bool:
        """Insert unless the key exists; True when this call inserted the row."""
        # RETURNING, not rowcount: psycopg reports -1 for INSERT … ON CONFLICT DO NOTHING.
        key = next(iter(table.primary_key.columns)).name
        statement = _insert_ignore(self.connection.dialect.name, table, returning=(key,))
        return self.connection.execute(statement, values).first() is not None

    def insert_ignore_many(self, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert each row unless its key exists, in one round trip (insertmanyvalues)."""
        if rows:
            self.connection.execute(_insert_ignore(self.connection.dialect.name, table), rows)

    def insert_ignore_returning(
        self, table: Table, rows: list[dict[str, Any]], columns: tuple[str, ...]
    ) -> list[Any]:
        """Insert each row unless its key exists, in one round trip; the COLUMNS of the rows
        this call inserted (those whose key existed are left out)."""
        if not rows:
            return []
        statement = _insert_ignore(self.connection.dialect.name, table, returning=columns)
        return list(self.connection.execute(statement, rows))


@functools.cache
def _insert_ignore(dialect: str, table: Table, *, returning: tuple[str, ...] = ()) -> Any:
    """INSERT … ON CONFLICT DO NOTHING, built once per table: values come as parameters.

    RETURNING the columns named: of the rows inserted only, so the key alone tells whether
    a row was inserted (psycopg reports rowcount -1).
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
    return statement.returning(*(table.c[name] for name in returning)) if returning else statement
