"""At-least-once, out of order: whatever order Pub/Sub delivers in, the threads end right."""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_sdk import WebClient

from bot.bootstrap import build_runtime
from bot.builds.relay import BuildRelay
from bot.slack.outbox import OutboxSender
from tests.builds.conftest import (
    TOKEN,
    attributes_of,
    build_events,
    new_build_id,
    replies,
    report,
    roots,
)
from tests.conftest import IMAGE, TEST_CONFIG, sha_of
from tests.support.slack_api import FakeSlackApi

STEPS = ("build", "tests")
RELAY_REPLIES = ("▶️", "✅", "❌", "🚫 build", "🧪")  # not the core's announcements
_commits = itertools.count()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BuildRelay, FakeSlackApi]]:
    """One store and one fake Slack for all examples; each example uses commits of its own."""
    folder = tmp_path_factory.mktemp("ordering")
    config = folder / "nbenv.yaml"
    config.write_text(textwrap.dedent(TEST_CONFIG), encoding="utf-8")
    runtime = build_runtime(str(config), f"sqlite:///{folder / 'nbenv.db'}")
    with FakeSlackApi(token=TOKEN) as slack:
        sender = OutboxSender(runtime.store, WebClient(token=TOKEN, base_url=slack.base_url))
        yield BuildRelay(runtime.nbenv, sender), slack


builds_of_a_commit = st.lists(
    st.tuples(
        st.sampled_from(["SUCCESS", "FAILURE", "CANCELLED"]),
        st.sampled_from(["staging", "feature", None]),
        st.booleans(),  # a test report is published for it
    ),
    min_size=1,
    max_size=2,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(commits=st.lists(builds_of_a_commit, min_size=1, max_size=2), data=st.data())
def test_any_order_with_duplicates_gives_one_thread_showing_the_latest_build(
    world: tuple[BuildRelay, FakeSlackApi], commits: list[list[Any]], data: st.DataObject
) -> None:
    relay, slack = world
    inputs: list[tuple[str, Any]] = []
    latest: dict[str, tuple[str, str]] = {}  # sha → (build id, final status)
    created = data.draw(st.permutations(range(sum(len(builds) for builds in commits))))
    slot = iter(created)
    for builds in commits:
        sha = sha_of(f"ordering {next(_commits)}")
        newest = -1.0
        for outcome, branch, with_report in builds:
            build_id = new_build_id()
            when = 60.0 * next(slot)
            events = build_events(
                build_id, sha, outcome=outcome, branch=branch, created=when, steps=STEPS
            )
            inputs += [("build", event) for event in events]
            if with_report:
                failed = outcome == "FAILURE"
                body = report(("t.ipynb", 2, 1, "KeyError", "'k'")) if failed else report()
                inputs.append(("report", (sha, body, build_id)))
            if when > newest:
                newest, latest[sha] = when, (build_id, outcome)
    duplicates = data.draw(st.lists(st.sampled_from(range(len(inputs))), max_size=8))
    stream = data.draw(st.permutations(inputs + [inputs[i] for i in duplicates]))

    for kind, item in stream:
        if kind == "build":
            assert relay.handle_build(item, attributes_of(item)) != "bad"
        else:
            sha, body, build_id = item
            relay.handle_report(IMAGE, sha, body, build_id)

    posted_keys = [
        c.args["metadata"]["event_payload"]["key"] for c in slack.calls("chat.postMessage")
    ]
    assert len(posted_keys) == len(set(posted_keys)), "a message was posted twice"
    for sha, (build_id, outcome) in latest.items():
        (root,) = roots(slack, sha)
        assert f"*{outcome}*" in root.text
        assert f"build `{build_id[:8]}`" in root.text
        own = [
            m.text
            for m in replies(slack, root)
            if m.text.startswith(("▶️", "✅", "❌", "🚫 build", "🧪"))
        ]
        assert len(own) == len(set(own)), own
