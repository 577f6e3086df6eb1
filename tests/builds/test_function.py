"""The deployed shape: functions-framework runs `relay_build_status` in its own process.

CloudEvents arrive over HTTP in binary and structured mode and as raw Pub/Sub push
bodies; the function writes to a real database and posts to a fake Slack Web API.
"""

from __future__ import annotations

import concurrent.futures
import random
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from slack_sdk import WebClient
from sqlalchemy import func, select

from bot.bootstrap import build_runtime
from bot.slack.outbox import LEASE, OutboxSender
from bot.store import tables as t
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
from tests.builds.process import FunctionProcess
from tests.conftest import IMAGE, OWNER, TEST_CONFIG, TESTER, sha_of
from tests.support.slack_api import FakeSlackApi


def function_env(
    config: Path, database_url: str, slack: FakeSlackApi, home: Path
) -> dict[str, str]:
    return {
        "NBENV_CONFIG": str(config),
        "NBENV_DATABASE_URL": database_url,
        "SLACK_API_URL": slack.base_url,
        "SLACK_BOT_TOKEN": TOKEN,
        "NBENV_HOME": str(home),
    }


def write_config(folder: Path) -> Path:
    config = folder / "nbenv.yaml"
    config.write_text(textwrap.dedent(TEST_CONFIG), encoding="utf-8")
    return config


class World:
    def __init__(self, folder: Path, database_url: str, slack: FakeSlackApi) -> None:
        self.folder = folder
        self.config = write_config(folder)
        self.database_url = database_url
        self.slack = slack
        self.runtime = build_runtime(str(self.config), database_url)

    def function(self, name: str) -> FunctionProcess:
        env = function_env(self.config, self.database_url, self.slack, self.folder / "home")
        return FunctionProcess(env, log_path=self.folder / f"{name}.log").start()

    def counts(self) -> dict[str, int]:
        with self.runtime.store.read() as tx:
            return {
                table.name: tx.connection.execute(
                    select(func.count()).select_from(table)
                ).scalar_one()
                for table in (t.slack_threads, t.outbox, t.audit_log, t.versions)
            }

    def environments(self) -> dict[str, Any]:
        return self.runtime.nbenv.handle(OWNER, f"status {IMAGE}").data["environments"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, FunctionProcess]]:
    folder = tmp_path_factory.mktemp("function")
    with FakeSlackApi(token=TOKEN) as slack:
        world = World(folder, f"sqlite:///{folder / 'nbenv.db'}", slack)
        with world.function("relay") as function:
            yield world, function


MODES: dict[str, Callable[[FunctionProcess, dict[str, Any]], tuple[int, str]]] = {
    "binary": FunctionProcess.binary,
    "structured": FunctionProcess.structured,
    "push": FunctionProcess.push,
}


@pytest.mark.parametrize("mode", list(MODES))
def test_each_delivery_mode_builds_one_thread(
    world: tuple[World, FunctionProcess], mode: str
) -> None:
    state, function = world
    slack = state.slack
    send = MODES[mode]
    sha = sha_of(f"function {mode}")
    build_id = new_build_id()
    events = build_events(build_id, sha, outcome="FAILURE", fail_at="tests", branch="feature")
    posts_before = len(slack.calls("chat.postMessage"))

    for event in events[:-1]:
        assert send(function, event_data(event, attributes_of(event))) == (200, "OK")
    attributes = {"nbenv": "test-report", "image": IMAGE, "sha": sha, "buildId": build_id}
    failed = report(("03_text_pipeline.ipynb", 4, 2, "KeyError", "'missing'"))
    assert send(function, event_data(failed, attributes)) == (200, "OK")
    assert send(function, event_data(events[-1], attributes_of(events[-1]))) == (200, "OK")

    # Everything was delivered before the function answered.
    (root,) = roots(slack, sha)
    new_posts = slack.calls("chat.postMessage")[posts_before:]
    assert [c.response["ts"] for c in new_posts if not c.args.get("thread_ts")] == [root.ts]
    assert {c.args["thread_ts"] for c in new_posts if c.args.get("thread_ts")} == {root.ts}
    updates = [c for c in slack.calls("chat.update") if c.args["ts"] == root.ts]
    assert len(updates) == root.edits == len(events)  # each step, the failure, the report
    assert "*FAILURE*" in root.text and "tests: 2/3 notebooks passed" in root.text
    failure = replies(slack, root)[-1].text
    assert "failed at step `tests`" in failure
    notebook = "`notebooks/nlp.keras-batch/tests/03_text_pipeline.ipynb`"
    assert f"{notebook}, cell 4 (In [3]), line 2" in failure
    assert "`KeyError: 'missing'`" in failure
    with state.runtime.store.read() as tx:
        version = tx.versions.get(IMAGE, sha)
    assert version is not None and not version.tests_passed and version.build_id == build_id


def test_staging_branch_success_publishes_through_the_function(
    world: tuple[World, FunctionProcess],
) -> None:
    state, function = world
    sha = sha_of("function staging")
    build_id = new_build_id()
    events = build_events(build_id, sha, subject="Bump numpy")
    for event in events[:3]:
        function.binary(event_data(event, attributes_of(event)))
    attributes = {"nbenv": "test-report", "image": IMAGE, "sha": sha, "buildId": build_id}
    function.binary(event_data(report(passed=3), attributes))
    for event in events[3:]:
        function.binary(event_data(event, attributes_of(event)))

    assert state.environments()["staging"]["sha"] == sha
    (root,) = roots(state.slack, sha)
    announcement = replies(state.slack, root)[-1]
    assert f"`{sha[:7]}` is now in staging" in announcement.text
    assert f"<@{TESTER}>" in announcement.text
    assert "Approve" in str(announcement.blocks) and "Reject" in str(announcement.blocks)


BAD = {
    "bad base64": {"message": {"data": "%%%", "messageId": "1"}, "subscription": "s"},
    "bad JSON": event_data(b"{", {"buildId": "b", "status": "QUEUED"}),
    "missing fields": event_data({"status": "WORKING"}, {}),
    "unknown status": event_data(build_resource("b-x", sha_of("x"), "MELTED"), {}),
    "unknown image": event_data(build_resource("b-y", sha_of("y"), "QUEUED", image="cv.none"), {}),
    "not ours": event_data(build_resource("b-z", sha_of("z"), "QUEUED", image=None), {}),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_events_are_acknowledged_without_a_trace(
    world: tuple[World, FunctionProcess], case: str
) -> None:
    state, function = world
    before, calls = state.counts(), len(state.slack.calls())

    # Acknowledged (2xx), so Pub/Sub does not redeliver it for days.
    assert function.binary(BAD[case]) == (200, "OK")
    assert function.push(BAD[case]) == (200, "OK")

    assert state.counts() == before
    assert len(state.slack.calls()) == calls


# -- two instances at once -------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    cluster = request.getfixturevalue("pg_cluster")
    return cluster.create_database(f"relay_{uuid.uuid4().hex[:10]}")


def test_two_instances_at_once_make_one_thread(shared_database: str, tmp_path: Path) -> None:
    with FakeSlackApi(token=TOKEN) as slack:
        state = World(tmp_path, shared_database, slack)
        with state.function("a") as first, state.function("b") as second:
            sha = sha_of("two instances")
            old, new = new_build_id(), new_build_id()
            events = build_events(old, sha, outcome="FAILURE", fail_at="run-tests")
            events += build_events(new, sha, created=300, branch="feature")
            stream = events * 2
            random.Random(7).shuffle(stream)
            jobs = [
                ((first, second)[i % 2], event_data(event, attributes_of(event)))
                for i, event in enumerate(stream)
            ]
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda job: job[0].binary(job[1]), jobs))
        assert answers == [(200, "OK")] * len(jobs)
        # What an instance could not send at once (its root was in flight elsewhere)
        # waits in the outbox for the next sender: the bot's, here. A message an instance
        # had claimed when it was stopped is taken up once its lease has run out.
        sender = OutboxSender(state.runtime.store, WebClient(token=TOKEN, base_url=slack.base_url))
        assert sender.drain(timeout_s=LEASE.total_seconds() + 15) == 0

        root_posts = [c for c in slack.calls("chat.postMessage") if not c.args.get("thread_ts")]
        assert len(root_posts) == 1
        (root,) = roots(slack, sha)
        assert root.channel == CHANNEL
        assert "*SUCCESS*" in root.text and f"build `{new[:8]}`" in root.text
        keys = [c.args["metadata"]["event_payload"]["key"] for c in slack.calls("chat.postMessage")]
        assert len(keys) == len(set(keys))
        with state.runtime.store.read() as tx:
            threads = tx.connection.execute(select(func.count()).select_from(t.slack_threads))
            assert threads.scalar_one() == 1
