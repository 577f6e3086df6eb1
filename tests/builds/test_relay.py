"""The relay in process: build events and reports → the thread, staging, production."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slack_sdk import WebClient
from sqlalchemy import func, select

from bot.builds.relay import BuildRelay
from bot.domain.commands import Promote
from bot.domain.text import to_plain
from bot.service.nbenv import Nbenv
from bot.slack.notifications import SlackNotifier
from bot.slack.outbox import OutboxSender
from bot.store import tables as t
from bot.store.uow import Store
from tests.builds.conftest import (
    CHANNEL,
    TOKEN,
    attributes_of,
    build_events,
    build_resource,
    event_data,
    new_build_id,
    replies,
    report,
    roots,
)
from tests.conftest import IMAGE, OWNER, TESTER, TESTER2, history_of, sha_of
from tests.support.slack_api import FakeSlackApi


def feed(relay: Any, events: list[dict[str, Any]]) -> list[str]:
    return [relay.handle_build(event, attributes_of(event)) for event in events]


def status(runtime: Any) -> dict[str, Any]:
    return runtime.nbenv.handle(OWNER, f"status {IMAGE}").data


def counts(runtime: Any) -> dict[str, int]:
    with runtime.store.read() as tx:
        return {
            table.name: tx.connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (t.slack_threads, t.outbox, t.audit_log, t.versions, t.environments)
        }


def test_one_thread_per_commit_root_updated_in_place(
    relay: Any, slack: FakeSlackApi, runtime: Any
) -> None:
    sha = sha_of("one thread")
    build_id = new_build_id()
    events = build_events(build_id, sha, branch="feature/tokenizer", subject="Add a <tokenizer>")

    assert feed(relay, events) == ["applied"] * len(events)

    posts = slack.calls("chat.postMessage")
    root_posts = [c for c in posts if not c.args.get("thread_ts")]
    assert len(root_posts) == 1
    (root,) = roots(slack, sha)
    assert root.ts == root_posts[0].response["ts"]
    updates = slack.calls("chat.update")
    assert updates and {(c.args["channel"], c.args["ts"]) for c in updates} == {(CHANNEL, root.ts)}
    assert [c.args["thread_ts"] for c in posts if c.args.get("thread_ts")] == [root.ts] * 2
    # The root now reads as the finished build: status, subject, branch, steps, time, logs.
    assert "*SUCCESS*" in root.text
    assert "Add a &lt;tokenizer&gt;" in root.text
    assert "branch `feature/tokenizer`" in root.text
    assert f"build `{build_id[:8]}`" in root.text
    assert "build ✓ 55s · push ✓ 55s · run-tests ✓ 55s · deliver-report ✓ 55s · tests ✓ 55s" in (
        root.text
    )
    assert "5m 07s" in root.text
    assert f"<https://console.cloud.google.com/cloud-build/builds/{build_id}" in root.text
    texts = [m.text for m in replies(slack, root)]
    assert texts[0].startswith(f"▶️ build `{build_id[:8]}` from `feature/tokenizer` started")
    assert texts[1] == f"✅ build `{build_id[:8]}` succeeded in 5m 07s"
    # Not the staging branch: nothing is published.
    assert status(runtime)["environments"]["staging"] is None


def test_root_shows_step_progress_while_working(relay: Any, slack: FakeSlackApi) -> None:
    sha = sha_of("progress")
    events = build_events(new_build_id(), sha)
    feed(relay, events[:4])  # QUEUED, then WORKING on build, push, run-tests

    (root,) = roots(slack, sha)
    assert "*WORKING*" in root.text
    assert "step 3/5 `run-tests`" in root.text
    assert "build ✓ 55s · push ✓ 55s · run-tests … · deliver-report · · tests ·" in root.text


def test_duplicates_and_older_statuses_change_nothing(
    relay: Any, slack: FakeSlackApi, runtime: Any
) -> None:
    sha = sha_of("duplicates")
    events = build_events(new_build_id(), sha, branch="feature/x")
    feed(relay, events)
    calls_before = len(slack.calls())
    rows_before = counts(runtime)
    text_before = roots(slack, sha)[0].text

    replayed = feed(relay, [events[-1], events[0], events[2], events[-1]])

    assert replayed == ["duplicate", "stale", "stale", "duplicate"]
    assert len(slack.calls()) == calls_before
    assert counts(runtime) == rows_before
    assert roots(slack, sha)[0].text == text_before


def test_staging_success_publishes_and_asks_testers(
    relay: Any, slack: FakeSlackApi, runtime: Any
) -> None:
    sha = sha_of("staging success")
    build_id = new_build_id()
    events = build_events(build_id, sha, subject="Pin keras 2.15")
    feed(relay, events[:4])
    relay.handle_report(IMAGE, sha, report(passed=3), build_id)
    feed(relay, events[4:])

    staging = status(runtime)["environments"]["staging"]
    assert staging["sha"] == sha
    assert staging["updated_by"] == f"build:{build_id}"
    (root,) = roots(slack, sha)
    assert "tests: 3/3 notebooks passed" in root.text
    thread = replies(slack, root)
    assert thread[1].text.startswith(f"✅ build `{build_id[:8]}` succeeded in 5m 07s")
    announcement = thread[2]
    assert f"`{sha[:7]}` is now in staging for {IMAGE}" in announcement.text
    assert f"<@{TESTER}>" in announcement.text and f"<@{TESTER2}>" in announcement.text
    buttons = [e for b in announcement.blocks or [] for e in b.get("elements", [])]
    assert [(b["action_id"], b["text"]["text"]) for b in buttons] == [
        ("nbenv_approve", "Approve"),
        ("nbenv_reject", "Reject"),
    ]
    assert len(thread) == 3
    # The version keeps its report and package manifest.
    with runtime.store.read() as tx:
        version = tx.versions.get(IMAGE, sha)
    assert version is not None and version.tests_passed and version.build_id == build_id
    assert version.subject == "Pin keras 2.15" and version.branch == "staging"
    assert version.report["packages"] == report()["packages"]


def test_only_a_staging_branch_success_publishes(relay: Any, runtime: Any) -> None:
    failing = sha_of("staging failure")
    feed(relay, build_events(new_build_id(), failing, outcome="FAILURE", fail_at="build"))
    other = sha_of("other branch")
    feed(relay, build_events(new_build_id(), other, branch="experiments"))
    no_branch = sha_of("bare commit")
    feed(relay, build_events(new_build_id(), no_branch, branch=None))
    working = sha_of("still working")
    feed(relay, build_events(new_build_id(), working)[:-1])

    assert status(runtime)["environments"]["staging"] is None
    with runtime.store.read() as tx:
        assert tx.versions.get(IMAGE, failing) is None  # no image, no tests: no version


def test_test_failure_details_reach_the_thread(
    relay: Any, slack: FakeSlackApi, runtime: Any
) -> None:
    sha = sha_of("test failure")
    build_id = new_build_id()
    events = build_events(build_id, sha, outcome="FAILURE", fail_at="tests")
    feed(relay, events[:-1])
    failed = report(("03_text_pipeline.ipynb", 4, 2, "KeyError", "'missing'"), passed=2)
    relay.handle_report(IMAGE, sha, failed, build_id)
    feed(relay, events[-1:])

    (root,) = roots(slack, sha)
    assert "*FAILURE*" in root.text and "failed at `tests`" in root.text
    failure = replies(slack, root)[-1].text
    assert failure.startswith(
        f"❌ build `{build_id[:8]}` failed at step `tests` after 5m 07s: staging is unchanged"
    )
    assert "🧪 1 of 3 test notebooks failed:" in failure
    assert (
        f"• `notebooks/{IMAGE}/tests/03_text_pipeline.ipynb`, cell 4 (In [3]), line 2: "
        "`KeyError: 'missing'`"
    ) in failure
    assert "```" in failure and "----&gt; 2 tokens['missing']" in failure
    assert "\x1b" not in failure
    # Recorded as a failed version; staging untouched.
    versions = runtime.nbenv.handle(OWNER, f"versions {IMAGE}").data["items"]
    assert [(v["sha"], v["tests_passed"]) for v in versions] == [(sha, False)]
    assert status(runtime)["environments"]["staging"] is None


def test_report_after_the_failure_adds_the_details(relay: Any, slack: FakeSlackApi) -> None:
    sha = sha_of("late report")
    build_id = new_build_id()
    feed(relay, build_events(build_id, sha, outcome="FAILURE", fail_at="tests"))
    (root,) = roots(slack, sha)
    assert "Build step failure: build step 4" in replies(slack, root)[-1].text

    failed = report(("02_declared_packages.ipynb", 3, 1, "ImportError", "no keras"))
    relay.handle_report(IMAGE, sha, failed, build_id)
    relay.handle_report(IMAGE, sha, failed, build_id)  # redelivered

    details = replies(slack, root)[-1].text
    assert details.startswith(f"🧪 build `{build_id[:8]}`: 1 of 3 test notebooks failed:")
    assert "cell 3 (In [2]), line 1: `ImportError: no keras`" in details
    assert len([m for m in replies(slack, root) if m.text.startswith("🧪")]) == 1
    assert "tests: 2/3 notebooks passed" in roots(slack, sha)[0].text


def test_retried_build_of_a_commit_reuses_its_thread(relay: Any, slack: FakeSlackApi) -> None:
    sha = sha_of("retry")
    first, second = new_build_id(), new_build_id()
    feed(relay, build_events(first, sha, outcome="FAILURE", fail_at="run-tests"))
    feed(relay, build_events(second, sha, created=600, branch="feature"))
    # The first build's messages arriving late are ignored.
    assert feed(relay, build_events(first, sha, outcome="FAILURE")[-2:]) == ["stale", "stale"]

    (root,) = roots(slack, sha)
    assert "*SUCCESS*" in root.text and f"build `{second[:8]}` (retry)" in root.text
    texts = [m.text for m in replies(slack, root)]
    assert texts[-2].startswith(
        f"▶️ build `{second[:8]}` from `feature` started again (replaces build `{first[:8]}`)"
    )
    assert texts[-1].startswith(f"✅ build `{second[:8]}` succeeded")


def approve_staging(relay: Any, runtime: Any, sha: str) -> None:
    feed(relay, build_events(new_build_id(), sha))
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")


def test_production_branch_success_promotes_under_the_policy(
    relay: Any, slack: FakeSlackApi, runtime: Any
) -> None:
    sha = sha_of("release")
    approve_staging(relay, runtime, sha)
    build_id = new_build_id()

    feed(relay, build_events(build_id, sha, branch="main", created=900))

    environments = status(runtime)["environments"]
    assert environments["production"]["sha"] == sha
    assert environments["production"]["updated_by"] == f"build:{build_id}"
    (root,) = roots(slack, sha)
    assert f"build:{build_id} promoted `{sha[:7]}` to production" in replies(slack, root)[-1].text
    history = history_of(runtime.nbenv, OWNER, f"history {IMAGE} {sha}")
    assert [(e["action"], e["outcome"]) for e in history][-1] == ("promote", "ok")


def test_production_branch_success_without_approval_posts_the_refusal(
    relay: Any, slack: FakeSlackApi, runtime: Any
) -> None:
    sha = sha_of("unapproved")
    feed(relay, build_events(new_build_id(), sha))  # in staging, nobody approved
    build_id = new_build_id()

    feed(relay, build_events(build_id, sha, branch="main", created=900))

    assert status(runtime)["environments"]["production"] is None
    (root,) = roots(slack, sha)
    refusal = replies(slack, root)[-1].text
    assert refusal.startswith(
        f"🚫 `{sha[:7]}` was not promoted to production (build `{build_id[:8]}`)"
    )
    assert "has 0 of 1 required approvals" in refusal
    history = history_of(runtime.nbenv, OWNER, f"history {IMAGE}")
    assert (history[-1]["action"], history[-1]["outcome"]) == ("promote", "refused")
    assert history[-1]["actor"] == f"build:{build_id}"


def test_production_build_of_a_commit_not_in_staging_is_refused(
    relay: Any, slack: FakeSlackApi, runtime: Any
) -> None:
    approved = sha_of("approved")
    approve_staging(relay, runtime, approved)
    merge = sha_of("merge commit")
    build_id = new_build_id()

    feed(relay, build_events(build_id, merge, branch="main", created=900))

    assert status(runtime)["environments"]["production"] is None
    (root,) = roots(slack, merge)
    refusal = replies(slack, root)[-1].text
    assert f"`{merge[:7]}` is not what staging points to (`{approved[:7]}`)" in refusal
    assert "git merge --ff-only" in refusal
    history = history_of(runtime.nbenv, OWNER, f"history {IMAGE}")
    assert (history[-1]["action"], history[-1]["sha"], history[-1]["outcome"]) == (
        "promote",
        merge,
        "refused",
    )


def test_redelivered_production_success_promotes_once(
    relay: Any, slack: FakeSlackApi, runtime: Any
) -> None:
    sha = sha_of("promote once")
    approve_staging(relay, runtime, sha)
    events = build_events(new_build_id(), sha, branch="main", created=900)
    feed(relay, events)
    calls = len(slack.calls())

    assert feed(relay, events[-1:] * 3) == ["duplicate"] * 3

    assert len(slack.calls()) == calls
    history = history_of(runtime.nbenv, OWNER, f"history {IMAGE} {sha}")
    assert [e["action"] for e in history].count("promote") == 1


def test_manual_publish_first_keeps_its_message_as_the_root(
    relay: Any, slack: FakeSlackApi, runtime: Any
) -> None:
    sha = sha_of("manual publish")
    runtime.nbenv.publish(OWNER, IMAGE, sha, report=report())
    relay.sender.deliver_due()
    (announcement,) = slack.messages(CHANNEL).values()

    feed(relay, build_events(new_build_id(), sha, branch="feature"))

    assert slack.calls("chat.update") == []
    root = slack.messages(CHANNEL)[announcement.ts]
    assert root.text == announcement.text
    texts = [m.text for m in replies(slack, root)]
    assert [text.split()[0] for text in texts] == ["▶️", "✅"]
    assert roots(slack, sha) == []


def test_slack_outage_keeps_messages_until_delivered(slack: FakeSlackApi, runtime: Any) -> None:
    # A clock the test moves, so the sender's 5 s backoff passes at once.
    now = [datetime.now(UTC)]
    store = Store(runtime.store.engine, clock=lambda: now[0])
    sender = OutboxSender(store, WebClient(token=TOKEN, base_url=slack.base_url))
    relay = BuildRelay(Nbenv(runtime.config, store, notifier=SlackNotifier()), sender)
    sha = sha_of("outage")
    events = build_events(new_build_id(), sha, branch="feature")
    slack.fail_next(1, status=503)

    feed(relay, events[:2])
    assert roots(slack, sha) == [] and sender.pending() == 3

    now[0] += timedelta(seconds=10)
    feed(relay, events[2:])

    (root,) = roots(slack, sha)
    assert len([c for c in slack.calls("chat.postMessage") if not c.args.get("thread_ts")]) == 1
    assert "*SUCCESS*" in root.text
    assert [m.text.split()[0] for m in replies(slack, root)] == ["▶️", "✅"]
    assert sender.pending() == 0


BAD_EVENTS = {
    "bad base64": {"message": {"data": "not base64!!", "messageId": "9"}},
    "bad JSON": event_data(b"{not json", {"buildId": "x", "status": "QUEUED"}),
    "no message": {"subscription": "projects/p/subscriptions/s"},
    "not an object": event_data(["a", "list"], {}),
    "missing id": event_data({"status": "QUEUED", "substitutions": {"_IMAGE_NAME": IMAGE}}, {}),
    "unknown status": event_data(
        build_resource("b-unknown", sha_of("bad"), "EXPLODED"), {"buildId": "b-unknown"}
    ),
    "missing SHA": event_data(
        {"id": "b-nosha", "status": "QUEUED", "substitutions": {"_IMAGE_NAME": IMAGE}}, {}
    ),
    "bad createTime": event_data(
        {**build_resource("b-time", sha_of("bad"), "QUEUED"), "createTime": "yesterday"}, {}
    ),
    "unknown image": event_data(
        build_resource("b-img", sha_of("x"), "QUEUED", image="nlp.nope"), {}
    ),
    "no _IMAGE_NAME": event_data(build_resource("b-none", sha_of("x"), "QUEUED", image=None), {}),
    "report for unknown image": event_data(
        report(), {"nbenv": "test-report", "image": "nope", "sha": sha_of("x"), "buildId": "b"}
    ),
    "report with bad SHA": event_data(
        report(), {"nbenv": "test-report", "image": IMAGE, "sha": "abc", "buildId": "b"}
    ),
    "malformed report": event_data(
        {"notebooks": [{"path": "x.ipynb", "status": "exploded"}]},
        {"nbenv": "test-report", "image": IMAGE, "sha": sha_of("x"), "buildId": "b"},
    ),
}


@pytest.mark.parametrize("case", list(BAD_EVENTS))
def test_bad_events_are_acknowledged_and_change_nothing(
    case: str, relay: Any, slack: FakeSlackApi, runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.builds.relay")
    before = counts(runtime)

    outcome = relay.handle_pubsub(BAD_EVENTS[case])

    expected = "ignored" if case in ("unknown image", "no _IMAGE_NAME") else "bad"
    assert outcome == expected
    assert counts(runtime) == before
    assert slack.calls() == []
    (line,) = [r.getMessage() for r in caplog.records if r.name == "bot.builds.relay"]
    assert "\n" not in line and ("dropped" in line or "ignored" in line)


def test_pubsub_envelope_carries_builds_and_reports(
    relay: Any, slack: FakeSlackApi, runtime: Any
) -> None:
    sha = sha_of("envelope")
    build_id = new_build_id()
    events = build_events(build_id, sha, outcome="FAILURE", fail_at="tests")
    for event in events[:-1]:
        assert relay.handle_pubsub(event_data(event, attributes_of(event))) == "applied"
    attributes = {"nbenv": "test-report", "image": IMAGE, "sha": sha, "buildId": build_id}
    failed = report(("01_x.ipynb", 2, 5, "ValueError", "bad shape"))
    assert relay.handle_pubsub(event_data(failed, attributes)) == "applied"
    assert relay.handle_pubsub(event_data(events[-1], attributes_of(events[-1]))) == "applied"

    (root,) = roots(slack, sha)
    assert "cell 2 (In [1]), line 5: `ValueError: bad shape`" in replies(slack, root)[-1].text
    with runtime.store.read() as tx:
        version = tx.versions.get(IMAGE, sha)
    assert version is not None and not version.tests_passed
    assert json.dumps(version.report, sort_keys=True) == json.dumps(failed, sort_keys=True)


def test_promote_command_and_relay_agree_on_the_policy(relay: Any, runtime: Any) -> None:
    """The git-driven promotion refuses exactly where `/nbenv promote` would."""
    sha = sha_of("frozen")
    approve_staging(relay, runtime, sha)
    runtime.nbenv.handle(OWNER, f"freeze {IMAGE} release freeze")
    with pytest.raises(Exception, match="frozen") as by_hand:
        runtime.nbenv.execute(OWNER, Promote(image=IMAGE))

    feed(relay, build_events(new_build_id(), sha, branch="main", created=900))

    assert status(runtime)["environments"]["production"] is None
    history = history_of(runtime.nbenv, OWNER, f"history {IMAGE}")
    assert history[-1]["outcome"] == "refused"
    # The record keeps refusals as plain text (`@U01OWNER`, not Slack's `<@U01OWNER>`).
    assert history[-1]["details"]["reason"] == to_plain(str(by_hand.value))


def test_a_burst_is_answered_at_once_and_still_reaches_every_thread(
    slack: FakeSlackApi, runtime: Any
) -> None:
    """The function's own sender thread: acknowledge early under load, send everything."""
    sender = OutboxSender(runtime.store, WebClient(token=TOKEN, base_url=slack.base_url))
    relay = BuildRelay(runtime.nbenv, sender, background=True)
    commits = [sha_of(f"burst {i}") for i in range(6)]
    streams = [build_events(new_build_id(), sha, branch="feature") for sha in commits]
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(lambda events: feed(relay, events), streams))
        assert outcomes == [["applied"] * 7] * 6
        deadline = time.monotonic() + 30
        while sender.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert relay.deliverer is not None
        relay.deliverer.stop()

    assert sender.pending() == 0
    for sha in commits:
        (root,) = roots(slack, sha)
        assert "*SUCCESS*" in root.text
        assert [m.text.split()[0] for m in replies(slack, root)] == ["▶️", "✅"]


def _break_environment_writes(runtime: Any, broken: bool) -> None:
    """A database fault at the wire: writes to the environment pointers fail."""
    with runtime.store.engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            if broken:
                connection.exec_driver_sql(
                    "CREATE TRIGGER fault BEFORE UPDATE ON environments "
                    "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
                )
            else:
                connection.exec_driver_sql("DROP TRIGGER fault")
        elif broken:
            connection.exec_driver_sql(
                "CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'disk I/O error'; END $$"
            )
            connection.exec_driver_sql(
                "CREATE TRIGGER fault BEFORE UPDATE ON environments "
                "FOR EACH ROW EXECUTE FUNCTION fault()"
            )
        else:
            connection.exec_driver_sql("DROP TRIGGER fault ON environments")
            connection.exec_driver_sql("DROP FUNCTION fault()")


def test_a_publication_cut_short_is_finished_by_the_redelivery(
    relay: Any, slack: FakeSlackApi, runtime: Any
) -> None:
    sha = sha_of("cut short")
    events = build_events(new_build_id(), sha)
    feed(relay, events[:-1])
    _break_environment_writes(runtime, True)
    try:
        # The function fails (HTTP 500), so Pub/Sub will deliver the SUCCESS again.
        with pytest.raises(Exception, match="disk I/O error"):
            relay.handle_build(events[-1], attributes_of(events[-1]))
    finally:
        _break_environment_writes(runtime, False)
    assert status(runtime)["environments"]["staging"] is None

    assert relay.handle_build(events[-1], attributes_of(events[-1])) == "duplicate"

    assert status(runtime)["environments"]["staging"]["sha"] == sha
    (root,) = roots(slack, sha)
    texts = [m.text for m in replies(slack, root)]
    assert [t.split()[0] for t in texts] == ["▶️", "✅", "🧪"]
    assert f"`{sha[:7]}` is now in staging" in texts[-1]
    # Redelivered again: nothing more happens.
    assert relay.handle_build(events[-1], attributes_of(events[-1])) == "duplicate"
    assert len(replies(slack, root)) == 3


def test_a_thread_whose_root_could_not_be_posted_goes_on_once_the_bot_is_invited(
    relay: Any, slack: FakeSlackApi, runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The bot is not yet in the image's channel when the build starts: its root and first
    reply fail for good. Once it is invited, the rest of the thread must not wait behind
    them, nor overtake them (Slack's member_joined_channel may come late, or never): they
    go out again first, in their places, and the testers get their buttons."""
    sha = sha_of("not in channel")
    build_id = new_build_id()
    events = build_events(build_id, sha, subject="Pin keras")
    slack.keep_bot_out_of(CHANNEL)
    feed(relay, events[:-1])  # the root, "started" and the root's updates are refused
    refusals = {c.response["error"] for c in slack.calls("chat.postMessage")}
    assert refusals == {"not_in_channel"} and slack.messages(CHANNEL) == {}
    # The operator learns why, and what to do.
    hints = [r.getMessage() for r in caplog.records if "/invite @nbenv" in r.getMessage()]
    assert hints and CHANNEL in hints[0]

    slack.invite_bot(CHANNEL)  # before the build succeeds
    feed(relay, events[-1:])

    (root,) = roots(slack, sha)
    assert "*SUCCESS*" in root.text
    thread = replies(slack, root)
    assert thread[0].text.startswith(f"▶️ build `{build_id[:8]}` from `staging` started")
    assert thread[1].text.startswith(f"✅ build `{build_id[:8]}` succeeded")
    announcement = thread[-1]
    assert f"`{sha[:7]}` is now in staging for {IMAGE}" in announcement.text
    buttons = [e for b in announcement.blocks or [] for e in b.get("elements", [])]
    assert [b["action_id"] for b in buttons] == ["nbenv_approve", "nbenv_reject"]
    assert relay.sender.pending() == 0


def test_every_message_fits_in_slack_whatever_the_build_says(
    relay: Any, slack: FakeSlackApi, runtime: Any
) -> None:
    """A 1 MB logUrl, a 100 KB commit subject and failure detail, a huge traceback: each
    message is cut to Slack's limits with a visible marker, none is refused."""
    sha = sha_of("huge texts")
    build_id = new_build_id()
    events = build_events(build_id, sha, outcome="FAILURE", fail_at="tests", subject="s" * 100_000)
    for event in events:
        event["logUrl"] = "https://console.cloud.google.com/logs?" + "x" * 1_000_000
        if "failureInfo" in event:
            event["failureInfo"]["detail"] = "d" * 100_000
    feed(relay, events[:-1])
    failed = report(("03_text_pipeline.ipynb", 4, 2, "KeyError", "'" + "k" * 100_000 + "'"))
    failed["notebooks"][-1]["failure"]["traceback"] = "frame\n" * 200_000
    relay.handle_report(IMAGE, sha, failed, build_id)
    feed(relay, events[-1:])

    assert relay.sender.pending() == 0
    refused = [c for c in slack.calls() if c.response and not c.response.get("ok")]
    assert refused == [] and slack.failed_calls() == []
    (root,) = roots(slack, sha)
    assert "*FAILURE*" in root.text and "…" in root.text
    texts = [root.text, *(m.text for m in replies(slack, root))]
    assert all(len(text) <= 4000 for text in texts)
    assert "KeyError" in texts[-1] and "…" in texts[-1]


def test_what_was_refused_for_a_missing_channel_is_sent_again_in_order(
    relay: Any, slack: FakeSlackApi, runtime: Any
) -> None:
    """The bot is invited only after the build: the whole thread, buttons included, goes
    out when it joins, once, in order, with the root showing the final status."""
    sha = sha_of("invited late")
    build_id = new_build_id()
    slack.keep_bot_out_of(CHANNEL)
    feed(relay, build_events(build_id, sha))
    assert slack.messages(CHANNEL) == {} and relay.sender.pending() == 0

    slack.invite_bot(CHANNEL)
    assert relay.sender.revive_missing_channel("C0OTHER") == 0
    assert relay.sender.revive_missing_channel(CHANNEL) > 0
    relay.sender.drain(timeout_s=10)

    (root,) = roots(slack, sha)
    assert "*SUCCESS*" in root.text
    texts = [m.text for m in replies(slack, root)]
    assert len(texts) == 3
    assert texts[0].startswith("▶️") and texts[1].startswith("✅")
    assert f"`{sha[:7]}` is now in staging for {IMAGE}" in texts[2]
    assert relay.sender.revive_missing_channel() == 0  # nothing is left to send


def test_a_late_retry_does_not_repeat_a_root_already_replaced(
    relay: Any, slack: FakeSlackApi, runtime: Any
) -> None:
    """The root was refused, an update opened the thread later: sending the refused
    messages again adds the missing reply, not a stale copy of the root."""
    sha = sha_of("replaced root")
    build_id = new_build_id()
    events = build_events(build_id, sha)
    slack.keep_bot_out_of(CHANNEL)
    feed(relay, events[:2])
    slack.invite_bot(CHANNEL)
    feed(relay, events[2:])

    relay.sender.revive_missing_channel()
    relay.sender.drain(timeout_s=10)

    (root,) = roots(slack, sha)
    thread = replies(slack, root)
    assert [m.text for m in thread if m.text.startswith("▶️")]  # "started" is not lost
    assert not [m for m in thread if f"*{IMAGE}* `{sha[:7]}`" in m.text]
    assert "*SUCCESS*" in root.text
