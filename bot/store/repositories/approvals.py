"""Approvals: the testers' verdicts on a version."""

from __future__ import annotations

from sqlalchemy import insert, select, update

from bot.domain.policy import Verdict, standing_verdicts
from bot.store import tables as t
from bot.store.repositories._base import Repository


class Approvals(Repository):
    __slots__ = ()

    def standing(self, image: str, sha: str) -> list[Verdict]:
        """The latest standing verdict of each person on SHA (voided ones ignored)."""
        return standing_verdicts(self.history(image, sha)[1])

    def standing_on(self, image: str, shas: list[str]) -> dict[str, list[Verdict]]:
        """`standing` for each of SHAS in one query (a page of versions)."""
        by_sha: dict[str, list[Verdict]] = {sha: [] for sha in shas}
        if not shas:
            return by_sha
        rows = self.connection.execute(
            select(t.verdicts)
            .where(
                t.verdicts.c.image == image,
                t.verdicts.c.sha.in_(shas),
                t.verdicts.c.void.is_(False),
            )
            .order_by(t.verdicts.c.id)
        )
        for row in rows:
            by_sha[row.sha].append(Verdict(row.user_id, row.approved, row.reason, row.at))
        return {sha: standing_verdicts(history) for sha, history in by_sha.items()}

    def history(self, image: str, sha: str) -> tuple[list[int], list[Verdict]]:
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

    def add(self, image: str, sha: str, user: str, *, approved: bool, reason: str | None) -> None:
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

    def void(self, ids: list[int]) -> None:
        """The verdicts IDS no longer count (their version was revoked)."""
        if ids:
            self.connection.execute(
                update(t.verdicts).where(t.verdicts.c.id.in_(ids)).values(void=True)
            )
