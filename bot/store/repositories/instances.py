"""Instances: the notebook instances nbenv made, and their state."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update

from bot.store import tables as t
from bot.store.repositories._base import Repository


class Instances(Repository):
    __slots__ = ()

    def add(
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

    def get(self, name: str) -> dict[str, Any] | None:
        row = self.connection.execute(select(t.instances).where(t.instances.c.name == name)).first()
        return None if row is None else dict(row._mapping)

    def matching(
        self, *, image: str | None = None, sha: str | None = None, active: bool = False
    ) -> list[dict[str, Any]]:
        """The instances of IMAGE and SHA (any when None), oldest first; ACTIVE: only those
        starting or running."""
        statement = select(t.instances).order_by(t.instances.c.created_at)
        if image is not None:
            statement = statement.where(t.instances.c.image == image)
        if sha is not None:
            statement = statement.where(t.instances.c.sha == sha)
        if active:
            statement = statement.where(t.instances.c.state.in_(("starting", "running")))
        return [dict(row._mapping) for row in self.connection.execute(statement)]

    def update(self, name: str, **values: Any) -> None:
        self.connection.execute(
            update(t.instances).where(t.instances.c.name == name).values(**values)
        )
