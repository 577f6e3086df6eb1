"""Pointers: which version each environment of an image runs, and how they moved."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, select, update

from bot.domain.errors import Conflict
from bot.domain.model import ImageState, Pointer
from bot.domain.names import Env, short
from bot.domain.operations import Plan
from bot.store import tables as t
from bot.store.repositories._base import Repository
from bot.store.repositories.freezes import Freezes
from bot.store.repositories.versions import Versions


class Pointers(Repository):
    __slots__ = ("freezes", "versions")

    def __init__(
        self, connection: Connection, now: str, *, freezes: Freezes, versions: Versions
    ) -> None:
        super().__init__(connection, now)
        self.freezes = freezes  # part of an image's state
        self.versions = versions  # a rollback revokes the version it leaves

    def ensure(self, image: str) -> None:
        """IMAGE has a row for every environment (empty when new)."""
        for env in Env:
            self.insert_ignore(
                t.environments, {"image": image, "env": env.value, "sha": None, "generation": 0}
            )

    def state(self, image: str) -> ImageState:
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
        return ImageState(image=image, pointers=pointers, freeze=self.freezes.get(image))

    def apply(self, plan: Plan, *, actor: str, operation_id: str | None = None) -> None:
        """Move the pointers of PLAN, each only if its generation is still the one planned."""
        self.ensure(plan.image)
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
                current = self.state(plan.image)
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
            self.versions.revoke(
                plan.image, plan.revoke, by=actor, reason=plan.details.get("reason")
            )

    def history(self, image: str) -> list[dict[str, Any]]:
        """Every move of IMAGE's pointers, oldest first."""
        rows = self.connection.execute(
            select(t.pointer_history)
            .where(t.pointer_history.c.image == image)
            .order_by(t.pointer_history.c.id)
        )
        return [dict(row._mapping) for row in rows]
