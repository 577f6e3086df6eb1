"""The relay tells a build's thread in notifications; the Slack notifier queues them as the
Web API calls the outbox sender sends, in the order the build happened."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bot.builds.relay import BuildRelay
from bot.domain.notifications import Announcement, ThreadRootUpdate
from bot.slack.notifications import web_api_call
from bot.store import tables as t
from tests.builds.conftest import CHANNEL, attributes_of, build_events, new_build_id, report
from tests.conftest import IMAGE, sha_of


def _outbox(runtime: Any) -> list[Any]:
    with runtime.store.read() as tx:
        return list(tx.connection.execute(select(t.outbox).order_by(t.outbox.c.id)))


def test_a_build_thread_is_queued_as_slack_posts_and_root_updates_in_order(runtime: Any) -> None:
    relay = BuildRelay(runtime.nbenv, None)  # no sender: what it queued stays to be read
    sha, build_id = sha_of("queued thread"), new_build_id()
    events = build_events(build_id, sha, outcome="FAILURE", fail_at="tests")
    for event in events[:-1]:
        relay.handle_build(event, attributes_of(event))
    relay.handle_report(IMAGE, sha, report(("03_x.ipynb", 4, 2, "KeyError", "'k'")), build_id)
    relay.handle_build(events[-1], attributes_of(events[-1]))

    rows = _outbox(runtime)
    prefix = f"build:{IMAGE}:{sha}:"
    kinds = [
        "update" if row.dedupe_key.startswith(prefix + "update:") else row.dedupe_key[len(prefix) :]
        for row in rows
    ]
    # The report came before the FAILURE: its details are in the failure's reply.
    assert kinds == [
        "root",
        "update",
        f"{build_id}:started",
        *["update"] * 5,
        f"{build_id}:failed",
    ]
    for row in rows:
        assert (row.thread_image, row.thread_sha) == (IMAGE, sha)
        assert row.status == "pending"
        if row.dedupe_key.startswith(prefix + "update:"):
            # The sender fills in the root's channel and ts when it sends it.
            assert (row.method, list(row.payload)) == ("chat.update", ["text"])
        else:
            assert row.method == "chat.postMessage"
            assert row.payload == {
                "channel": CHANNEL,
                "text": row.payload["text"],
                "unfurl_links": False,
            }
    assert "*FAILURE*" in rows[-2].payload["text"]


def test_thread_notifications_as_web_api_calls() -> None:
    sha = sha_of("as calls")
    post = Announcement(CHANNEL, IMAGE, sha, "▶️ started", link_previews=False)
    assert web_api_call("k1", post) == (
        "k1",
        "chat.postMessage",
        {"channel": CHANNEL, "text": "▶️ started", "unfurl_links": False},
        (IMAGE, sha),
    )
    update = ThreadRootUpdate(IMAGE, sha, "✅ *SUCCESS*")
    assert web_api_call("k2", update) == (
        "k2",
        "chat.update",
        {"text": "✅ *SUCCESS*"},
        (IMAGE, sha),
    )
    # An announcement with link previews (the default) is queued as before: no such field.
    assert web_api_call("k3", Announcement(CHANNEL, IMAGE, None, "hi"))[2:] == (
        {"channel": CHANNEL, "text": "hi"},
        None,
    )
