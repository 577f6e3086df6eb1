"""Idempotency keys: which inputs were handled already, and what they answered."""

from __future__ import annotations

from typing import Any

from sqlalchemy import null, select, update

from bot.store import tables as t
from bot.store.repositories._base import Repository


class IdempotencyKeys(Repository):
    __slots__ = ()

    def claim(self, key: str, result: dict[str, Any] | None = None) -> bool:
        """Record that input KEY was handled; False when it already was (a retry)."""
        # SQL NULL, not JSON null, when there is no result yet: `remember` fills it once.
        answer = null() if result is None else result
        return self.insert_ignore(
            t.processed_events, {"key": key[:255], "at": self.now, "result": answer}
        )

    def claim_many(self, keys: list[str]) -> None:
        """Record that the inputs KEYS were handled, in one round trip (those already
        recorded are left as they are)."""
        self.insert_ignore_many(
            t.processed_events, [{"key": key[:255], "at": self.now} for key in keys]
        )

    def remember(self, key: str, result: dict[str, Any]) -> None:
        """What input KEY answered, for a retry to answer the same (kept once)."""
        self.connection.execute(
            update(t.processed_events)
            .where(t.processed_events.c.key == key[:255], t.processed_events.c.result.is_(None))
            .values(result=t.storable_json(result))
        )

    def claimed(self, key: str) -> dict[str, Any] | None:
        """What input KEY answered when it was handled; None when it was not."""
        row = self.connection.execute(
            select(t.processed_events.c.result).where(t.processed_events.c.key == key[:255])
        ).first()
        return None if row is None else (row.result or {})
