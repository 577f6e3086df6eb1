"""The job queue on gcp: store rows published to Pub/Sub, pushed back, run once by key.

Against Google's Pub/Sub emulator where it is installed (those tests are skipped, with
the reason, where it is not); the failure paths need no emulator.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bot.store.uow import Store, utcnow
from tests.conftest import IMAGE, TESTER
from tests.gcp.conftest import release
from tests.support.fake_google import PubSubEmulator, emulator_path, wait_until

PROJECT = "nbenv-test"
TOPIC = f"projects/{PROJECT}/topics/nbenv-jobs"
needs_emulator = pytest.mark.skipif(
    emulator_path() is None,
    reason="Google's Pub/Sub emulator (google-cloud-sdk pubsub-emulator + Java) is not installed",
)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSubEmulator]:
    with PubSubEmulator(tmp_path_factory.mktemp("pubsub")) as running:
        yield running


@pytest.fixture
def pubsub(emulator: PubSubEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The emulator with a fresh jobs topic; clients find it through PUBSUB_EMULATOR_HOST."""
    from google.cloud import pubsub_v1

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=TOPIC)
    subscriber = pubsub_v1.SubscriberClient()
    yield subscriber
    for subscription in publisher.list_topic_subscriptions(topic=TOPIC):
        subscriber.delete_subscription(subscription=subscription)
    publisher.delete_topic(topic=TOPIC)
    subscriber.close()


class PushReceiver:
    """An HTTP endpoint for a push subscription: records bodies, answers 204 (or a status)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.answer = 204
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(receiver.answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/pubsub/jobs"


def _job(body: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(body["message"]["data"]))


@needs_emulator
def test_a_published_job_arrives_with_its_key_kind_and_payload(pubsub, backend) -> None:
    subscription = f"projects/{PROJECT}/subscriptions/pull-jobs"
    pubsub.create_subscription(name=subscription, topic=TOPIC)

    message_id = backend.publish_job(
        "instance:nb-1", "instance", {"name": "nb-1", "env": "staging"}
    )

    response = pubsub.pull(subscription=subscription, max_messages=10, timeout=10)
    (received,) = response.received_messages
    assert received.message.message_id == message_id
    assert json.loads(received.message.data) == {
        "key": "instance:nb-1",
        "kind": "instance",
        "payload": {"name": "nb-1", "env": "staging"},
    }
    assert dict(received.message.attributes) == {"kind": "instance", "key": "instance:nb-1"}


@needs_emulator
def test_queued_jobs_are_pushed_to_the_bot_and_run_once_by_key(
    pubsub, sqlite_url, gcp_config_file, google
) -> None:
    from google.cloud import pubsub_v1

    from bot.bootstrap import build_runtime

    receiver = PushReceiver()
    pubsub.create_subscription(
        name=f"projects/{PROJECT}/subscriptions/push-jobs",
        topic=TOPIC,
        push_config=pubsub_v1.types.PushConfig(push_endpoint=receiver.url),
    )
    runtime = build_runtime(str(gcp_config_file), sqlite_url)
    sha = release(runtime, google, "first")
    runtime.nbenv.handle(TESTER, f"instance {IMAGE} --env staging --name from-pubsub")
    dispatcher = runtime.nbenv.backend.job_dispatcher(runtime.store)

    assert dispatcher.dispatch_due() == 1
    assert dispatcher.dispatch_due() == 0  # handed over: not published twice

    (body,) = wait_until(lambda: receiver.bodies, timeout=20)
    job = _job(body)
    assert (job["key"], job["kind"]) == ("instance:from-pubsub", "instance")
    assert job["payload"]["sha"] == sha
    assert runtime.worker.run_key(job["key"]) == "done"
    assert runtime.worker.run_key(job["key"]) == "done"  # a redelivery: no second instance
    (instance,) = google.instances.values()
    assert instance["gceSetup"]["containerImage"]["tag"] == sha


@needs_emulator
def test_a_job_whose_message_was_lost_is_published_again_later(
    pubsub, sqlite_url, gcp_config_file, google
) -> None:
    from bot.backends.gcp.pubsub import REDISPATCH_AFTER
    from bot.bootstrap import build_runtime

    subscription = f"projects/{PROJECT}/subscriptions/pull-jobs"
    pubsub.create_subscription(name=subscription, topic=TOPIC)
    runtime = build_runtime(str(gcp_config_file), sqlite_url)
    runtime.nbenv.handle("U01OWNER", f"build {IMAGE}")
    backend = runtime.nbenv.backend
    assert backend.job_dispatcher(runtime.store).dispatch_due() == 1

    later = Store(runtime.store.engine, clock=lambda: utcnow() + REDISPATCH_AFTER + timedelta(1))
    assert backend.job_dispatcher(later).dispatch_due() == 1

    received = pubsub.pull(subscription=subscription, max_messages=10, timeout=10)
    keys = {json.loads(m.message.data)["key"] for m in received.received_messages}
    assert len(received.received_messages) == 2 and len(keys) == 1


@needs_emulator
def test_a_missing_topic_names_it(emulator, monkeypatch, backend) -> None:
    from bot.domain.errors import Refused

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)

    with pytest.raises(Refused) as refused:
        backend.publish_job("build:x", "build", {})

    assert str(refused.value) == (
        f"Pub/Sub could not queue the build job build:x: {TOPIC} was not found"
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_when_pubsub_is_unreachable_the_job_stays_queued_for_the_next_dispatch(
    monkeypatch, sqlite_url, gcp_config_file, google, caplog
) -> None:
    from bot.bootstrap import build_runtime

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{_closed_port()}")
    runtime = build_runtime(str(gcp_config_file), sqlite_url)
    runtime.nbenv.handle("U01OWNER", f"build {IMAGE}")

    assert runtime.nbenv.backend.job_dispatcher(runtime.store).dispatch_due() == 0

    assert "could not publish job build:" in caplog.text
    assert "Pub/Sub did not queue the build job" in caplog.text
    with runtime.store.read() as tx:
        from sqlalchemy import select

        from bot.store import tables as t

        (status, available_at) = tx.connection.execute(
            select(t.jobs.c.status, t.jobs.c.available_at)
        ).one()
    assert status == "queued" and available_at <= tx.now
    assert google.builds == {}
