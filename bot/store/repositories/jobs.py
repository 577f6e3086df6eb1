"""Jobs: the durable queue of slow work, claimed under a lease (see bot.service.jobs)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select, update

from bot.store import tables as t
from bot.store.repositories._base import Repository

# Payload keys that jobs queued by an earlier nbenv spell differently, and how they read
# now: such jobs may still be queued (or pushed back by Pub/Sub) after an upgrade, and
# must still answer whoever asked.
_RENAMED_KEYS = {"response_url": "reply_to"}  # Slack's word for where to answer, until 2026-11


class Jobs(Repository):
    __slots__ = ()

    def get(self, dedupe_key: str) -> dict[str, Any] | None:
        row = self.connection.execute(
            select(t.jobs).where(t.jobs.c.dedupe_key == dedupe_key[:255])
        ).first()
        return None if row is None else _job(row)

    def enqueue(self, dedupe_key: str, kind: str, payload: dict[str, Any]) -> bool:
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

    def claim_due(self, now: str, stale_before: str) -> dict[str, Any] | None:
        """Take the oldest job that is due at NOW, or running with a lease that ran out
        before STALE_BEFORE (its worker died); None when there is none, or another worker
        took it first. The job as it was before this claim."""
        row = self.connection.execute(
            select(t.jobs)
            .where(
                or_(
                    (t.jobs.c.status == "queued") & (t.jobs.c.available_at <= now),
                    (t.jobs.c.status == "running") & (t.jobs.c.available_at <= stale_before),
                )
            )
            .order_by(t.jobs.c.id)
            .limit(1)
        ).first()
        if row is None:
            return None
        claimed = self.connection.execute(
            update(t.jobs)
            .where(t.jobs.c.id == row.id, t.jobs.c.status == row.status)
            .values(status="running", attempts=row.attempts + 1, available_at=now)
        )
        return _job(row) if claimed.rowcount == 1 else None

    def claim(self, job: dict[str, Any], now: str) -> bool:
        """Take JOB (as read) for running at NOW; False when it changed since it was read."""
        claimed = self.connection.execute(
            update(t.jobs)
            .where(
                t.jobs.c.id == job["id"],
                t.jobs.c.status == job["status"],
                t.jobs.c.available_at == job["available_at"],
            )
            .values(status="running", attempts=job["attempts"] + 1, available_at=now)
        )
        return claimed.rowcount == 1

    def renew(self, job_id: int, attempt: int) -> None:
        """Renew the lease of job JOB_ID while it runs as ATTEMPT (a heartbeat)."""
        self.connection.execute(
            update(t.jobs)
            .where(
                t.jobs.c.id == job_id,
                t.jobs.c.status == "running",
                t.jobs.c.attempts == attempt,
            )
            .values(available_at=self.now)
        )

    def finish(self, job_id: int, status: str, error: str | None = None) -> None:
        self.connection.execute(
            update(t.jobs)
            .where(t.jobs.c.id == job_id)
            .values(status=status, error=error, finished_at=self.now)
        )

    def due(self, now: str, limit: int) -> list[Any]:
        """Up to LIMIT queued jobs due at NOW, oldest first: rows of id, dedupe_key, kind
        and payload."""
        return self.connection.execute(
            select(t.jobs.c.id, t.jobs.c.dedupe_key, t.jobs.c.kind, t.jobs.c.payload)
            .where(t.jobs.c.status == "queued", t.jobs.c.available_at <= now)
            .order_by(t.jobs.c.id)
            .limit(limit)
        ).all()

    def postpone(self, job_id: int, until: str) -> None:
        """A queued job handed elsewhere (published) is not due again before UNTIL."""
        self.connection.execute(
            update(t.jobs)
            .where(t.jobs.c.id == job_id, t.jobs.c.status == "queued")
            .values(available_at=until)
        )


def _job(row: Any) -> dict[str, Any]:
    """ROW as a job, its payload in today's keys whichever version queued it."""
    job = dict(row._mapping)
    if isinstance(job["payload"], dict) and not _RENAMED_KEYS.keys().isdisjoint(job["payload"]):
        payload = job["payload"] = dict(job["payload"])
        for old, new in _RENAMED_KEYS.items():
            if old in payload:
                payload.setdefault(new, payload.pop(old))
    return job
