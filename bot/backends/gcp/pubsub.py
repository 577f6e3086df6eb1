"""The job queue on gcp: jobs travel as Pub/Sub messages, pushed to `POST /pubsub/jobs`.

A job is first a row of the store's `jobs` table, written in the same transaction as
the request that made it (durable, deduplicated by its key). `JobDispatcher` then
publishes every due queued job to the topic `gcp.topics.jobs`, whose authenticated
push subscription delivers it to the bot, which runs it by its key (a redelivered
message finds the job done and changes nothing).

Publishing moves the row's `available_at` forward by `redispatch_after`: the row stays
`queued`, so the push can claim it at once, while a local worker and the next dispatch
leave it alone; if the message is lost, it is published again once that time is up.

Message data: JSON `{"key": KEY, "kind": KIND, "payload": {...}}`; attributes `kind`
and `key`, so a subscription can filter by kind without decoding.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

from bot.backends.gcp.clients import Caller, Clients, Op
from bot.domain.errors import NbenvError
from bot.store.uow import Store, iso

log = logging.getLogger(__name__)

SERVICE = "Pub/Sub"
REDISPATCH_AFTER = timedelta(minutes=10)


def encode_job(key: str, kind: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    data = json.dumps({"key": key, "kind": kind, "payload": payload}, sort_keys=True)
    return data.encode("utf-8"), {"kind": kind, "key": key[:1024]}


class JobPublisher:
    """Publishes jobs to the jobs topic; the client loads on the first publish."""

    def __init__(self, project: str, topic: str, clients: Clients, caller: Caller) -> None:
        self.project = project
        self.topic = topic
        self.clients = clients
        self.caller = caller

    @property
    def topic_path(self) -> str:
        return self.topic if "/" in self.topic else f"projects/{self.project}/topics/{self.topic}"

    def publish(self, key: str, kind: str, payload: dict[str, Any]) -> str:
        """Publish one job and wait until Pub/Sub has it; the message ID."""
        publisher = self.clients.publisher()
        data, attributes = encode_job(key, kind, payload)
        op = Op(
            SERVICE,
            f"queue the {kind} job {key}",
            self.topic_path,
            "pubsub.topics.publish",
            "roles/pubsub.publisher",
        )

        def publish_and_wait(*, retry: Any, timeout: Any) -> str:
            # publish() batches in the background; the future says when Pub/Sub has it.
            # Its timeout is a number of seconds per attempt, not a Timeout object.
            del timeout
            future = publisher.publish(
                self.topic_path,
                data,
                retry=retry,
                timeout=self.caller.policy.attempt_timeout,
                **attributes,
            )
            return str(future.result(timeout=self.caller.policy.deadline))

        return self.caller.call(op, publish_and_wait)


class JobDispatcher:
    """Hands the store's due jobs to Pub/Sub (on gcp, instead of running them locally)."""

    def __init__(
        self,
        store: Store,
        publisher: JobPublisher,
        *,
        redispatch_after: timedelta = REDISPATCH_AFTER,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.redispatch_after = redispatch_after

    def dispatch_due(self, limit: int = 100) -> int:
        """Publish up to LIMIT due queued jobs; how many were published.

        A job that cannot be published stays due (and is logged): the next call tries again.
        """
        now = self.store.clock()
        with self.store.read() as tx:
            rows = tx.jobs.due(iso(now), limit)
        published = 0
        for row in rows:
            try:
                self.publisher.publish(row.dedupe_key, row.kind, row.payload)
            except NbenvError as error:
                log.warning("could not publish job %s: %s", row.dedupe_key, error.message)
                break  # Pub/Sub is unreachable or refusing: the rest would fail the same way
            with self.store.write(audited=False) as tx:
                tx.jobs.postpone(row.id, until=iso(now + self.redispatch_after))
            published += 1
        return published
