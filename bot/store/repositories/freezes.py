"""Freezes: an image whose environments may not move, and why."""

from __future__ import annotations

from sqlalchemy import insert, select

from bot.domain.model import Freeze
from bot.store import tables as t
from bot.store.repositories._base import Repository


class Freezes(Repository):
    __slots__ = ()

    def get(self, image: str) -> Freeze | None:
        row = self.connection.execute(select(t.freezes).where(t.freezes.c.image == image)).first()
        return None if row is None else Freeze(row.reason, row.frozen_by, row.frozen_at)

    def set(self, image: str, *, by: str, reason: str) -> None:
        self.connection.execute(
            insert(t.freezes).values(image=image, reason=reason, frozen_by=by, frozen_at=self.now)
        )

    def clear(self, image: str) -> None:
        self.connection.execute(t.freezes.delete().where(t.freezes.c.image == image))
