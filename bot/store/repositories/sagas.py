"""Sagas: the journal of operations that span the store and the cloud, step by step."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update

from bot.store import tables as t
from bot.store.repositories._base import Repository


class Sagas(Repository):
    __slots__ = ()

    def start(
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

    def get(self, operation_id: str) -> dict[str, Any] | None:
        row = self.connection.execute(
            select(t.operations).where(t.operations.c.id == operation_id)
        ).first()
        return None if row is None else dict(row._mapping)

    def pending(self) -> list[str]:
        """The IDs of the operations not done yet, oldest first."""
        return list(
            self.connection.execute(
                select(t.operations.c.id)
                .where(t.operations.c.status != "done")
                .order_by(t.operations.c.created_at)
            ).scalars()
        )

    def complete_step(self, operation_id: str, index: int) -> None:
        operation = self.get(operation_id)
        assert operation is not None
        steps = [dict(step) for step in operation["steps"]]
        steps[index]["done"] = True
        self.connection.execute(
            update(t.operations)
            .where(t.operations.c.id == operation_id)
            .values(steps=steps, updated_at=self.now)
        )

    def fail(self, operation_id: str, error: str) -> None:
        self.connection.execute(
            update(t.operations)
            .where(t.operations.c.id == operation_id)
            .values(status="failed", error=error, updated_at=self.now)
        )

    def finish(self, operation_id: str) -> None:
        self.connection.execute(
            update(t.operations)
            .where(t.operations.c.id == operation_id)
            .values(status="done", error=None, updated_at=self.now)
        )
