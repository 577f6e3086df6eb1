"""The outbox: Slack calls queued with the change that caused them, sent by
bot.slack.outbox, which decides what is due; this module only reads and writes rows."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from sqlalchemy import bindparam, func, select, tuple_, update

from bot.store import tables as t
from bot.store.repositories._base import Repository
from bot.store.repositories.threads import ThreadKey

Message = tuple[str, str, dict[str, Any], ThreadKey | None]  # key, method, payload, thread

_QUEUE_COLUMNS = (
    "id",
    "dedupe_key",
    "method",
    "thread_image",
    "thread_sha",
    "status",
    "attempts",
    "next_attempt_at",
    "last_error",  # marks a message Slack may already have (bot.slack.outbox.UNSURE)
)
# Where a message goes, read from its payload without loading it: the sender paces and
# holds messages per method and channel.
_CHANNEL = t.outbox.c.payload["channel"].as_string().label("channel")
_REVIVE_COLUMNS = ("id", "dedupe_key", "method", "payload", "thread_image", "thread_sha")
_UNSENT = ("pending", "sending")
# Built once: the relay counts a thread's messages when it decides whose root it is.
_THREAD_MESSAGES = (
    select(t.outbox.c.thread_image, t.outbox.c.thread_sha, func.count())
    .where(
        tuple_(t.outbox.c.thread_image, t.outbox.c.thread_sha).in_(
            bindparam("b_keys", expanding=True)
        )
    )
    .group_by(t.outbox.c.thread_image, t.outbox.c.thread_sha)
)


class Outbox(Repository):
    __slots__ = ()

    # -- queueing ------------------------------------------------------------------------

    def enqueue(
        self,
        dedupe_key: str,
        method: str,
        payload: dict[str, Any],
        *,
        thread: ThreadKey | None = None,
    ) -> bool:
        """Queue a Slack Web API call; THREAD=(image, sha) threads it under that SHA's root.

        False when a message with this key was queued before (a retried input).
        """
        return self.insert_ignore(t.outbox, self._row(dedupe_key, method, payload, thread))

    def enqueue_many(self, messages: Iterable[Message]) -> None:
        """Queue several (dedupe_key, method, payload, thread) calls in one round trip;
        those whose key was queued before are left out."""
        self.insert_ignore_many(t.outbox, [self._row(*message) for message in messages])

    def _row(
        self, dedupe_key: str, method: str, payload: dict[str, Any], thread: ThreadKey | None
    ) -> dict[str, Any]:
        return {
            "dedupe_key": dedupe_key[:255],
            "method": method,
            # Stored as text the store can also read inside with SQL (the channel).
            "payload": t.storable_json(payload),
            "thread_image": thread[0] if thread else None,
            "thread_sha": thread[1] if thread else None,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": self.now,
            "created_at": self.now,
        }

    # -- sending -------------------------------------------------------------------------

    def unsent(self, limit: int) -> list[Any]:
        """Up to LIMIT unsent rows in queue order, without their payloads (read by `claim`,
        only for the rows sent) but with the channel they name, if any."""
        return list(
            self.connection.execute(
                select(*(t.outbox.c[name] for name in _QUEUE_COLUMNS), _CHANNEL)
                .where(t.outbox.c.status.in_(_UNSENT))
                .order_by(t.outbox.c.id)
                .limit(limit)
            )
        )

    def unsent_count(self) -> int:
        return len(
            list(
                self.connection.execute(select(t.outbox.c.id).where(t.outbox.c.status.in_(_UNSENT)))
            )
        )

    def supersede(self, ids: list[int]) -> None:
        """Retire the pending rows IDS: a newer message made them pointless."""
        self.connection.execute(
            update(t.outbox)
            .where(t.outbox.c.id.in_(ids), t.outbox.c.status == "pending")
            .values(status="superseded")
        )

    def claim(self, rows: Iterable[Any], lease_until: str) -> dict[int, dict[str, Any]]:
        """Take ROWS (as read by `unsent`) for sending until LEASE_UNTIL; their payloads by
        id. Rows another sender took since they were read are left out."""
        claimed = self.connection.execute(
            update(t.outbox)
            .where(
                tuple_(t.outbox.c.id, t.outbox.c.status, t.outbox.c.next_attempt_at).in_(
                    [(row.id, row.status, row.next_attempt_at) for row in rows]
                )
            )
            .values(status="sending", next_attempt_at=lease_until)
            .returning(t.outbox.c.id, t.outbox.c.payload)
        )
        return {row.id: dict(row.payload) for row in claimed}

    def record(self, outcomes: Iterable[tuple[int, dict[str, Any]]]) -> None:
        """Write each row's new VALUES, given as (id, values): one statement per shape of
        outcome (sent, retry, wait...), each run for all its rows."""
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row_id, values in outcomes:
            shapes.setdefault(tuple(sorted(values)), []).append({"b_id": row_id, **values})
        for columns, parameters in shapes.items():
            self.connection.execute(_outcome_statement(columns), parameters)

    def sending_in_thread(self, image: str, sha: str, now: str) -> bool:
        """A message of the thread of (IMAGE, SHA) is being sent under a lease live at NOW."""
        row = self.connection.execute(
            select(t.outbox.c.id)
            .where(
                t.outbox.c.thread_image == image,
                t.outbox.c.thread_sha == sha,
                t.outbox.c.status == "sending",
                # A lease that ran out belongs to a crashed sender: nobody to wait for.
                t.outbox.c.next_attempt_at > now,
            )
            .limit(1)
        ).first()
        return row is not None

    # -- threads -------------------------------------------------------------------------

    def count_by_thread(self, keys: list[ThreadKey]) -> dict[ThreadKey, int]:
        """How many messages were ever queued in each of the threads KEYS (those with any)."""
        return {
            (image, sha): count
            for image, sha, count in self.connection.execute(_THREAD_MESSAGES, {"b_keys": keys})
        }

    def in_threads(self, keys: set[ThreadKey]) -> list[Any]:
        """The rows (id, method, dedupe_key, thread_image, thread_sha) of the threads KEYS,
        in queue order."""
        if not keys:
            return []
        return list(
            self.connection.execute(
                select(t.outbox.c.id, t.outbox.c.method, t.outbox.c.dedupe_key)
                .add_columns(t.outbox.c.thread_image, t.outbox.c.thread_sha)
                .where(tuple_(t.outbox.c.thread_image, t.outbox.c.thread_sha).in_(sorted(keys)))
                .order_by(t.outbox.c.id)
            )
        )

    # -- refused for good ----------------------------------------------------------------

    def dead(
        self, errors: Iterable[str], since: str, threads: set[ThreadKey] | None = None
    ) -> list[Any]:
        """The rows (id, dedupe_key, method, payload, thread_image, thread_sha) refused for
        good with one of ERRORS and queued since SINCE (in the threads THREADS, if given)."""
        query = select(*(t.outbox.c[name] for name in _REVIVE_COLUMNS)).where(
            t.outbox.c.status == "dead",
            t.outbox.c.last_error.in_(tuple(errors)),
            t.outbox.c.created_at >= since,
        )
        if threads is not None:
            if not threads:
                return []
            keys = tuple_(t.outbox.c.thread_image, t.outbox.c.thread_sha)
            query = query.where(keys.in_(sorted(threads)))
        return list(self.connection.execute(query))

    def dead_destinations(self, errors: Iterable[str], since: str) -> list[tuple[Any, Any]]:
        """(payload, its thread's channel) of each row `dead` would return."""
        return [
            (payload, channel)
            for payload, channel in self.connection.execute(
                select(t.outbox.c.payload, t.slack_threads.c.channel)
                .select_from(
                    t.outbox.outerjoin(
                        t.slack_threads,
                        (t.slack_threads.c.image == t.outbox.c.thread_image)
                        & (t.slack_threads.c.sha == t.outbox.c.thread_sha),
                    )
                )
                .where(
                    t.outbox.c.status == "dead",
                    t.outbox.c.last_error.in_(tuple(errors)),
                    t.outbox.c.created_at >= since,
                )
            )
        ]

    def retire(self, ids: list[int]) -> None:
        """The rows IDS will never be sent: what they said is out of date."""
        self.connection.execute(
            update(t.outbox).where(t.outbox.c.id.in_(ids)).values(status="superseded")
        )

    def revive(self, ids: list[int]) -> None:
        """Queue the dead rows IDS again, as if new."""
        self.connection.execute(
            update(t.outbox)
            .where(t.outbox.c.id.in_(ids), t.outbox.c.status == "dead")
            .values(status="pending", attempts=0, last_error=None, next_attempt_at=self.now)
        )


@functools.cache
def _outcome_statement(columns: tuple[str, ...]) -> Any:
    return (
        update(t.outbox)
        .where(t.outbox.c.id == bindparam("b_id"))
        .values({column: bindparam(column) for column in columns})
    )
