"""Versions: the builds of an image, their test results and revocations."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy import Connection, func, insert, select, tuple_, update

from bot.domain.errors import BadInput
from bot.domain.model import Version
from bot.domain.names import check_sha_ref, is_full_sha, short
from bot.domain.paging import Page, check_limit, parse_version_cursor, version_cursor
from bot.domain.policy import kept_by_revocation
from bot.store import tables as t
from bot.store.repositories._base import Repository
from bot.store.repositories.approvals import Approvals


class Versions(Repository):
    __slots__ = ("approvals",)

    def __init__(self, connection: Connection, now: str, approvals: Approvals) -> None:
        super().__init__(connection, now)
        self.approvals = approvals  # a revocation voids approvals

    def get(self, image: str, sha: str) -> Version | None:
        row = self.connection.execute(
            select(t.versions).where(t.versions.c.image == image, t.versions.c.sha == sha)
        ).first()
        return None if row is None else Version(**row._mapping)

    def get_many(self, image: str, shas: list[str]) -> dict[str, Version]:
        """The versions of IMAGE among SHAS, by SHA, in one query (unknown ones left out)."""
        if not shas:
            return {}
        rows = self.connection.execute(
            select(t.versions).where(t.versions.c.image == image, t.versions.c.sha.in_(shas))
        )
        return {row.sha: Version(**row._mapping) for row in rows}

    def of_image(self, image: str) -> list[Version]:
        """IMAGE's versions, newest first."""
        rows = self.connection.execute(
            select(t.versions)
            .where(t.versions.c.image == image)
            .order_by(t.versions.c.created_at.desc())
        )
        return [Version(**row._mapping) for row in rows]

    def page(self, image: str, *, limit: int, before: str | None = None) -> Page[Version]:
        """IMAGE's versions, newest first (by creation, then SHA): LIMIT of them, after the
        one the cursor BEFORE names (from a previous page), or from the newest.

        Keyset paging on ix_versions_image_created: each page costs the same however deep
        it is, and versions recorded meanwhile do not shift the pages not yet seen.
        """
        limit = check_limit(limit)
        v = t.versions
        key = tuple_(v.c.created_at, v.c.sha)
        conditions = [v.c.image == image]
        if before is not None:
            conditions.append(key < tuple_(*parse_version_cursor(before)))
        # The page and how many versions there are from the cursor on, in one round trip
        # (the count reads only the index).
        matching = select(func.count()).select_from(v).where(*conditions).scalar_subquery()
        rows = self.connection.execute(
            select(v, matching.label("matching"))
            .where(*conditions)
            .order_by(v.c.created_at.desc(), v.c.sha.desc())
            .limit(limit)
        ).all()
        items = [Version(**dict(zip(row._fields[:-1], row[:-1], strict=True))) for row in rows]
        more = rows[0].matching - len(items) if rows else 0
        if not more:
            return Page(items, 0, None)
        last = items[-1]
        return Page(items, more, version_cursor(last.created_at, last.sha))

    def resolve_sha(self, image: str, ref: str) -> str:
        """A full SHA of a known version of IMAGE from a full SHA or a 7+ digit prefix."""
        ref = check_sha_ref(ref)
        if is_full_sha(ref):
            if self.get(image, ref) is None:
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

    def record(self, version: Version) -> Version:
        """Insert a version, or update its test result and report when it is built again."""
        existing = self.get(version.image, version.sha)
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
        return self.get(version.image, version.sha)  # type: ignore[return-value]

    def revoke(self, image: str, sha: str, *, by: str, reason: str | None) -> None:
        """Mark SHA revoked; the approvals it had no longer count (see kept_by_revocation)."""
        self.connection.execute(
            update(t.versions)
            .where(t.versions.c.image == image, t.versions.c.sha == sha)
            .values(revoked_at=self.now, revoked_by=by, revoked_reason=reason or "rolled back")
        )
        ids, history = self.approvals.history(image, sha)
        kept = kept_by_revocation(history)
        self.approvals.void([row_id for row_id, stays in zip(ids, kept, strict=True) if not stays])

    def clear_revocation(self, image: str, sha: str) -> None:
        """SHA is approved afresh: it is no longer shown as revoked (the log keeps that it was)."""
        self.connection.execute(
            update(t.versions)
            .where(t.versions.c.image == image, t.versions.c.sha == sha)
            .values(revoked_at=None, revoked_by=None, revoked_reason=None)
        )
