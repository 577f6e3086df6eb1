"""Delivery to Slack through the outbox: rate limits and outages delay messages but never
lose or duplicate them, and what is queued when the bot stops goes out after a restart."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from tests.conftest import OWNER, TESTER
from tests.slack.bot import (
    CHANNEL,
    BotServer,
    blocks_text,
    buttons,
    channel_messages,
    home_text,
    published,
    wait_message,
    wait_response,
    wait_until,
)
from tests.support.slack_api import BOT_USER_ID, FakeSlackApi

MANIFEST = Path(__file__).resolve().parents[2] / "config" / "slack-manifest.yaml"


def _texts(slack: FakeSlackApi, *needles: str) -> list[str]:
    return [m.text for m in slack.messages().values() if any(n in m.text for n in needles)]


def test_rate_limits_and_outages_delay_but_never_duplicate(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    failed_before = len(slack.failed_calls())
    slack.fail_next(3, status=429, retry_after=1)
    slack.fail_next(1, status=503)

    commit = published(rt, image)
    rt.nbenv.handle(TESTER, f"approve {image}")
    rt.nbenv.handle(OWNER, f"freeze {image} while Slack is flaky")

    root = wait_message(slack, f"`{commit[:7]}` is now in staging for {image}", timeout=30)
    approval = wait_message(slack, f"approved `{commit[:7]}`", timeout=30)
    freeze = wait_message(slack, f"froze {image}", timeout=30)
    time.sleep(1.0)  # a duplicate would have been sent by now
    assert len(slack.failed_calls()) - failed_before == 4
    assert [s.status for s in slack.failed_calls()[failed_before:]] == [429, 429, 429, 503]
    assert len(_texts(slack, image, commit[:7])) == 3
    assert len(channel_messages(slack, f"approved `{commit[:7]}`")) == 1
    assert approval.thread_ts == root.ts  # order kept: the reply waited for its root
    assert freeze.thread_ts is None


def test_private_answers_survive_response_url_failures(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    published(rt, image)
    rt.nbenv.handle(TESTER, f"approve {image}")
    url = slack.response_url(f"flaky-{image}")
    slack.fail_next(1, status=429, retry_after=1, method="response_url")

    server.slash(OWNER, f"promote {image}", response_url=url)

    plan = wait_response(slack, url, timeout=20)
    assert "Promote to production" in blocks_text(plan)
    time.sleep(1.0)
    name = url.rsplit("/", 1)[1]
    assert len(slack.calls(f"response_url:/response/{name}")) == 1
    assert len(slack.failed_calls(f"response_url:/response/{name}")) == 1


def test_messages_queued_when_the_bot_stops_go_out_after_a_restart(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    slack.fail_next(1, status=429, retry_after=3)
    commit = published(rt, image)
    slack.wait_for("chat.postMessage", 0)
    deadline = time.monotonic() + 10
    while not any(image in c.args.get("text", "") for c in slack.failed_calls()):
        assert time.monotonic() < deadline, "the first attempt never happened"
        time.sleep(0.02)

    server.stop()  # the message is still queued, waiting for its Retry-After
    assert not channel_messages(slack, f"`{commit[:7]}` is now in staging")
    server.start()

    wait_message(slack, f"`{commit[:7]}` is now in staging for {image}", timeout=20)
    time.sleep(1.0)
    assert len(channel_messages(slack, f"`{commit[:7]}` is now in staging")) == 1


def _published_while_out(rt, image: str, slack: FakeSlackApi) -> str:  # type: ignore[no-untyped-def]
    """Publish a version while the bot is out of the channel; wait for Slack's refusal."""
    commit = published(rt, image)
    wait_until(
        lambda: [
            c
            for c in slack.calls("chat.postMessage")
            if commit[:7] in c.args.get("text", "") and c.response.get("error") == "not_in_channel"
        ],
        what="the announcement refused",
    )
    return commit


def test_messages_refused_before_the_bot_was_invited_go_out_when_it_joins(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    slack.keep_bot_out_of(CHANNEL)
    try:
        commit = _published_while_out(rt, image, slack)
        # The testers and owners learn why nothing arrives, and what to do.
        home = home_text(server, slack, TESTER)
        assert f"nbenv is not in <#{CHANNEL}>" in home and "/invite @nbenv" in home
    finally:
        slack.invite_bot(CHANNEL)
    joined = {
        "type": "member_joined_channel",
        "user": BOT_USER_ID,
        "channel": CHANNEL,
        "channel_type": "C",
        "team": "T0NBENV01",
        "event_ts": f"{time.time():.6f}",
    }
    assert server.event(joined).status == 200

    announcement = wait_message(slack, f"`{commit[:7]}` is now in staging for {image}")
    assert {"Approve", "Reject"} <= set(buttons({"blocks": announcement.blocks}))
    assert "is not in" not in home_text(server, slack, TESTER)


def test_a_missed_join_event_is_made_up_for_by_the_periodic_retry(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    """The bot was invited while nobody listened (the event was lost, or the bot was
    down): the retry that runs when the bot starts, then every 10 minutes, sends it all."""
    slack.keep_bot_out_of(CHANNEL)
    try:
        commit = _published_while_out(rt, image, slack)
        server.stop()
    finally:
        slack.invite_bot(CHANNEL)
    server.start()

    announcement = wait_message(slack, f"`{commit[:7]}` is now in staging for {image}")
    assert {"Approve", "Reject"} <= set(buttons({"blocks": announcement.blocks}))


def test_an_answer_whose_response_url_expired_reaches_the_person_as_a_dm(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    commit = published(rt, image)
    rt.nbenv.handle(TESTER, f"approve {image}")
    url = slack.response_url(f"expired-{image}")
    name = url.rsplit("/", 1)[1]
    slack.advance(31 * 60)  # the answer comes after Slack's 30 minutes are up

    server.slash(OWNER, f"promote {image} --yes", response_url=url)

    (dm,) = wait_until(
        lambda: channel_messages(slack, f"promoted `{commit[:7]}`", channel=OWNER),
        20,
        "the answer as a DM",
    )
    assert dm.thread_ts is None
    assert [c.status for c in slack.failed_calls(f"response_url:/response/{name}")] == [404]
    assert slack.calls(f"response_url:/response/{name}") == []
    # The app's Messages tab, where that DM shows, is on (read-only) in the manifest.
    manifest = yaml.safe_load(MANIFEST.read_text("utf-8"))
    app_home = manifest["features"]["app_home"]
    assert app_home["messages_tab_enabled"] and app_home["messages_tab_read_only_enabled"]
