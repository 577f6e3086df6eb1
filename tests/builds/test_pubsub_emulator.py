"""End to end through Google's Pub/Sub emulator: real topics, push subscriptions to the
running function, build events published as Cloud Build does, the test report published
by the pipeline's own deliver-report step."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.builds.conftest import TOKEN, build_events, new_build_id, replies, report, roots
from tests.builds.pipeline import load, run_step, values, workspace
from tests.builds.test_function import World
from tests.conftest import IMAGE, sha_of
from tests.support.fake_google import PubSubEmulator, emulator_path, wait_until
from tests.support.slack_api import FakeSlackApi

pytestmark = [
    pytest.mark.emulator,
    pytest.mark.skipif(
        emulator_path() is None,
        reason="Google's Pub/Sub emulator (gcloud component pubsub-emulator, and Java) "
        "is not installed",
    ),
]
PROJECT = "nbenv-test"


@pytest.fixture(scope="module")
def pubsub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSubEmulator]:
    with (
        PubSubEmulator(tmp_path_factory.mktemp("emulator")) as emulator,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
        patch.setenv("PUBSUB_PROJECT_ID", PROJECT)
        yield emulator


def subscribe(topic: str, endpoint: str) -> Any:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic_path = publisher.topic_path(PROJECT, topic)
    publisher.create_topic(request={"name": topic_path})
    subscriber.create_subscription(
        request={
            "name": subscriber.subscription_path(PROJECT, f"{topic}-relay"),
            "topic": topic_path,
            "push_config": {"push_endpoint": endpoint},
        }
    )
    return publisher, topic_path


def test_cloud_builds_and_reports_topics_reach_one_thread(
    pubsub: PubSubEmulator, tmp_path: Path
) -> None:
    with FakeSlackApi(token=TOKEN) as slack:
        state = World(tmp_path, f"sqlite:///{tmp_path / 'nbenv.db'}", slack)
        with state.function("relay") as function:
            publisher, builds_topic = subscribe("cloud-builds", function.url)
            subscribe("nbenv-reports", function.url)
            sha = sha_of("emulator")
            build_id = new_build_id()
            events = build_events(build_id, sha, outcome="FAILURE", fail_at="tests")
            for event in events[:-1]:
                data = json.dumps(event).encode()
                publisher.publish(builds_topic, data, buildId=build_id, status=event["status"])
            # The pipeline's own step publishes the report, as in Cloud Build.
            config = load("staging.yaml")
            root_dir = workspace(tmp_path, IMAGE, {})
            failed = report(("03_text_pipeline.ipynb", 4, 2, "KeyError", "'missing'"))
            (root_dir / "report.json").write_text(json.dumps(failed))
            subs = values(config, _IMAGE_NAME=IMAGE, COMMIT_SHA=sha, BUILD_ID=build_id)
            subs["PROJECT_ID"] = PROJECT
            delivered = run_step(config, "deliver-report", root_dir, subs)
            assert delivered.returncode == 0, delivered.stderr
            assert "delivered as message" in delivered.stdout
            last = events[-1]
            publisher.publish(
                builds_topic, json.dumps(last).encode(), buildId=build_id, status="FAILURE"
            ).result(timeout=30)

            def finished() -> Any:
                found = roots(slack, sha)
                if not found or "*FAILURE*" not in found[0].text:
                    return None
                thread = " ".join(m.text for m in replies(slack, found[0]))
                return found if "cell 4 (In [3]), line 2" in thread else None

            (root,) = wait_until(finished, timeout=60)

        assert "tests: 2/3 notebooks passed" in root.text
        posts = [c for c in slack.calls("chat.postMessage") if not c.args.get("thread_ts")]
        assert len(posts) == 1
        texts = [m.text for m in replies(slack, root)]
        assert any("`KeyError: 'missing'`" in text for text in texts)
        with state.runtime.store.read() as tx:
            version = tx.versions.get(IMAGE, sha)
        assert version is not None and not version.tests_passed
        assert version.report["packages"] == failed["packages"]


def test_report_to_a_missing_topic_fails_the_step(pubsub: PubSubEmulator, tmp_path: Path) -> None:
    config = load("staging.yaml")
    root_dir = workspace(tmp_path, IMAGE, {})
    (root_dir / "report.json").write_text(json.dumps(report()))
    subs = values(config, _IMAGE_NAME=IMAGE, _REPORTS_TOPIC="no-such-topic")

    result = run_step(config, "deliver-report", root_dir, subs)

    assert result.returncode == 1
    assert "could not deliver the test report to no-such-topic: Pub/Sub answered HTTP 404" in (
        result.stderr
    )
