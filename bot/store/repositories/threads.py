"""Threads: one Slack thread per (image, sha), its root message and the relay's state.

Writers lock thread rows in key order, and before any outbox row of theirs (the relay
and the sender alike), so two of them never deadlock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, tuple_, update

from bot.store import tables as t
from bot.store.repositories._base import Repository

ThreadKey = tuple[str, str]  # (image, sha)

# Built once: the relay runs these for every event.
_THREAD_KEY = tuple_(t.slack_threads.c.image, t.slack_threads.c.sha)
_WHERE_THREAD = (t.slack_threads.c.image == bindparam("b_image")) & (
    t.slack_threads.c.sha == bindparam("b_sha")
)
_STATE = select(t.slack_threads.c.state).where(_WHERE_THREAD)
# What `lock` returns of each thread row.
_LOCKED_COLUMNS = ("image", "sha", "ts", "state")
# Sorted, so that two instances locking several threads at once take them in one order.
_FOR_UPDATE = (
    select(*(t.slack_threads.c[name] for name in _LOCKED_COLUMNS))
    .where(_THREAD_KEY.in_(bindparam("b_keys", expanding=True)))
    .order_by(t.slack_threads.c.image, t.slack_threads.c.sha)
    .with_for_update()
)
_SAVE = (
    update(t.slack_threads)
    .where(_WHERE_THREAD)
    .values(
        state=bindparam("state", type_=t.slack_threads.c.state.type),
        status_rank=bindparam("rank"),
        updated_at=bindparam("now"),
    )
)
# The root of a thread that has none yet (a missing row is inserted instead).
_SET_ROOT = (
    update(t.slack_threads)
    .where(_WHERE_THREAD, t.slack_threads.c.ts.is_(None))
    .values(channel=bindparam("channel"), ts=bindparam("ts"))
)


@dataclass(frozen=True)
class ThreadRoot:
    """Where a thread's root message is; TS None until it is delivered."""

    channel: str
    ts: str | None


class Threads(Repository):
    __slots__ = ()

    def state(self, image: str, sha: str) -> dict[str, Any]:
        """The relay's state of the thread of (IMAGE, SHA); empty when there is none."""
        row = self.connection.execute(_STATE, {"b_image": image, "b_sha": sha}).first()
        return dict(row.state) if row is not None else {}

    def lock(
        self, keys: Iterable[ThreadKey], *, channel_of: Callable[[str], str]
    ) -> dict[ThreadKey, Any]:
        """The thread rows of KEYS (with ts and state), locked in key order until the
        transaction ends; those missing are created first, in the channel CHANNEL_OF(image)."""
        wanted = set(keys)
        rows = {
            (row.image, row.sha): row
            for row in self.connection.execute(_FOR_UPDATE, {"b_keys": sorted(wanted)})
        }
        missing = sorted(wanted - rows.keys())
        if missing:
            # The rows this insert creates are this transaction's until it ends, as locked
            # as the others. Two instances may both get here: the insert of one waits for
            # the other's commit and then does nothing, and it locks the other's row.
            created = self.insert_ignore_returning(
                t.slack_threads,
                [
                    {
                        "image": image,
                        "sha": sha,
                        "channel": channel_of(image),
                        "ts": None,
                        "state": {},
                        "status_rank": 0,
                        "updated_at": self.now,
                    }
                    for image, sha in missing
                ],
                _LOCKED_COLUMNS,
            )
            rows.update(((row.image, row.sha), row) for row in created)
            others = [key for key in missing if key not in rows]
            if others:
                for row in self.connection.execute(_FOR_UPDATE, {"b_keys": others}):
                    rows[(row.image, row.sha)] = row
        return rows

    def save(self, states: Iterable[tuple[ThreadKey, dict[str, Any], int]]) -> None:
        """Store the threads' new (state, status rank), in one round trip."""
        parameters = [
            {"b_image": image, "b_sha": sha, "state": state, "rank": rank, "now": self.now}
            for (image, sha), state, rank in states
        ]
        if parameters:
            self.connection.execute(_SAVE, parameters)

    def roots(self, keys: set[ThreadKey]) -> dict[ThreadKey, ThreadRoot]:
        """Where the threads of KEYS are (those that exist)."""
        if not keys:
            return {}
        rows = self.connection.execute(
            select(t.slack_threads.c.image, t.slack_threads.c.sha)
            .add_columns(t.slack_threads.c.channel, t.slack_threads.c.ts)
            .where(tuple_(t.slack_threads.c.image, t.slack_threads.c.sha).in_(sorted(keys)))
        )
        return {(row.image, row.sha): ThreadRoot(row.channel, row.ts) for row in rows}

    def set_roots(self, roots: Iterable[tuple[ThreadKey, str, str]]) -> None:
        """Each thread (IMAGE, SHA) of ROOTS, given as ((image, sha), channel, ts), opens
        with the message TS in CHANNEL, unless it has a root already; in two round trips
        however many there are. Rows are locked in key order, as the relay locks them."""
        parameters = [
            {"b_image": image, "b_sha": sha, "channel": channel, "ts": ts}
            for (image, sha), channel, ts in sorted(roots, key=lambda root: root[0])
        ]
        if not parameters:
            return
        self.connection.execute(_SET_ROOT, parameters)
        self.insert_ignore_many(
            t.slack_threads,
            [
                {
                    "image": row["b_image"],
                    "sha": row["b_sha"],
                    "channel": row["channel"],
                    "ts": row["ts"],
                    "state": {},
                    "status_rank": 0,
                    "updated_at": self.now,
                }
                for row in parameters
            ],
        )
