"""The floor for bench_relay.py: decode and parse the event, then commit one row per event
to the store before answering, grouped as the relay groups its writes.

Any relay that stores an event before Pub/Sub gets its ack pays at least this much; the
relay adds the thread's state, the outbox and Slack on top.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import functions_framework
from cloudevents.http import CloudEvent

from bot.builds.events import BuildEvent, decode_pubsub, parse_build
from bot.store.database import make_engine, upgrade
from bot.store.group_commit import GroupCommit
from bot.store.uow import Store

_store = Store(make_engine(os.environ["NBENV_DATABASE_URL"]))
upgrade(_store.engine)


def _commit(events: Sequence[BuildEvent]) -> list[None]:
    with _store.write(audited=False) as tx:
        tx.idempotency.claim_many([f"floor:{e.build_id}:{e.status}:{e.progress}" for e in events])
    return [None] * len(events)


_writes: GroupCommit[BuildEvent, None] = GroupCommit(_commit)


@functions_framework.cloud_event
def floor(event: CloudEvent) -> None:
    message = decode_pubsub(event.get_data())
    _writes.submit(parse_build(message.payload, message.attributes))
