"""A runtime's outbox delivered to a fake Slack on a clock the test moves: Retry-After and
backoffs pass at once, without sleeping (see tests/slack/test_delivery_exactly_once.py and
tests/multi/test_slack_faults.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from sqlalchemy import select

from bot.slack.outbox import OutboxSender, Pace
from bot.store import tables as t
from bot.store.uow import Store
from tests.conftest import IMAGE, sha_of
from tests.support.slack_api import FakeSlackApi

TOKEN = "xoxb-test"
CHANNEL = "C01NLP"


class OutboxWorld:
    """The outbox of a runtime's store on a clock the test moves (Retry-After and backoffs
    pass at once), delivering to a fake Slack through a client that waits 1 s for answers."""

    def __init__(self, runtime: Any, slack: FakeSlackApi, pace: Pace | None) -> None:
        self.now = datetime.now(UTC)
        self.slack = slack
        self.store = Store(runtime.store.engine, clock=lambda: self.now)
        client = WebClient(token=TOKEN, base_url=slack.base_url, timeout=1)
        self.sender = OutboxSender(self.store, client, pace=pace)

    def post(self, key: str, text: str, channel: str = CHANNEL, thread: str | None = None) -> None:
        """Queue a message as the service does (in a thread of IMAGE when THREAD is given)."""
        with self.store.write(audited=False) as tx:
            tx.outbox.enqueue(
                key,
                "chat.postMessage",
                {"channel": channel, "text": text},
                thread=(IMAGE, sha_of(thread)) if thread else None,
            )

    def later(self, seconds: float) -> int:
        self.now += timedelta(seconds=seconds)
        return self.sender.deliver_due()

    def texts(self, channel: str = CHANNEL) -> list[str]:
        return [m.text for m in self.slack.messages(channel).values()]

    def statuses(self) -> list[str]:
        with self.store.read() as tx:
            return list(tx.connection.execute(select(t.outbox.c.status)).scalars())
