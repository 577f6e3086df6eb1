"""The fake Socket Mode service refuses what Slack refuses (tests/support/socket_mode.py),
checked with a bare WebSocket client standing in for the app."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support.slack_api import FakeSlackApi
from tests.support.socket_mode import FakeSocketMode

APP_TOKEN = "xapp-1-A0NBENVAPP-1-test"
DEADLINE_S = 0.3  # short, so a missed deadline is quick to see


@pytest.fixture
def slack() -> Iterator[FakeSlackApi]:
    with FakeSlackApi() as fake:
        yield fake


@pytest.fixture
def socket_mode(slack: FakeSlackApi) -> Iterator[FakeSocketMode]:
    with FakeSocketMode(slack, ack_deadline_s=DEADLINE_S, max_retries=1) as fake:
        yield fake


def _open(slack: FakeSlackApi) -> ClientConnection:
    url = WebClient(base_url=slack.base_url).apps_connections_open(app_token=APP_TOKEN)["url"]
    return connect(url, open_timeout=5)


def _receive(app: ClientConnection) -> dict:  # type: ignore[type-arg]
    return json.loads(app.recv(timeout=5))


def test_the_url_needs_the_app_level_token_in_the_header(
    slack: FakeSlackApi, socket_mode: FakeSocketMode
) -> None:
    client = WebClient(base_url=slack.base_url)
    with pytest.raises(SlackApiError) as bot_token:
        client.apps_connections_open(app_token="xoxb-test")
    as_a_field = requests.post(
        f"{slack.base_url}apps.connections.open", data={"token": APP_TOKEN}, timeout=5
    ).json()

    assert bot_token.value.response["error"] == "not_allowed_token_type"
    assert as_a_field == {"ok": False, "error": "invalid_auth"}  # the header, not a field
    assert client.apps_connections_open(app_token=APP_TOKEN)["url"].startswith("ws://127.0.0.1:")


def test_a_connection_opens_with_hello_and_only_with_a_given_url(
    slack: FakeSlackApi, socket_mode: FakeSocketMode
) -> None:
    with pytest.raises(InvalidStatus):
        connect(f"ws://127.0.0.1:{socket_mode.port}/link/?ticket=made-up", open_timeout=5)
    with _open(slack) as app:
        hello = _receive(app)

    assert hello["type"] == "hello" and hello["num_connections"] == 1
    assert socket_mode.handshakes_refused == 1


def test_an_ack_counts_once_for_a_known_envelope_within_the_deadline(
    slack: FakeSlackApi, socket_mode: FakeSocketMode
) -> None:
    with _open(slack) as app:
        _receive(app)  # hello
        delivery = socket_mode.send("slash_commands", {"command": "/nbenv", "text": "help"})
        envelope = _receive(app)
        app.send(json.dumps({"envelope_id": "not-one-of-slacks"}))
        app.send("not json")
        app.send(json.dumps({"envelope_id": envelope["envelope_id"], "payload": {"text": "hi"}}))
        app.send(json.dumps({"envelope_id": envelope["envelope_id"]}))
        refused = socket_mode.wait_refused(3)

    assert envelope["type"] == "slash_commands" and envelope["accepts_response_payload"] is True
    assert delivery.response == {"text": "hi"}
    assert [r.reason for r in refused] == [
        "unknown envelope_id",
        "not JSON",
        "envelope already acknowledged",
    ]


def test_an_event_acked_late_is_missed_and_delivered_again(
    slack: FakeSlackApi, socket_mode: FakeSocketMode
) -> None:
    with _open(slack) as app:
        _receive(app)  # hello
        first = socket_mode.send("events_api", {"event": {"type": "app_home_opened"}})
        envelope = _receive(app)
        retry = _receive(app)  # the deadline passed: Slack tries again
        app.send(json.dumps({"envelope_id": envelope["envelope_id"]}))  # too late now
        app.send(json.dumps({"envelope_id": retry["envelope_id"]}))
        (again,) = socket_mode.retries_of(first)
        socket_mode.wait_ack(again)
        refused = socket_mode.wait_refused(1)

    assert (envelope["retry_attempt"], envelope["retry_reason"]) == (0, "")
    assert (retry["retry_attempt"], retry["retry_reason"]) == (1, "timeout")
    assert retry["envelope_id"] != envelope["envelope_id"] and retry["payload"] == first.payload
    assert first.missed and first.ack is None and len(first.late_acks) == 1
    assert [r.reason for r in refused] == ["too late"]


def test_slack_does_not_retry_a_slash_command_by_itself(
    slack: FakeSlackApi, socket_mode: FakeSocketMode
) -> None:
    with _open(slack) as app:
        _receive(app)
        delivery = socket_mode.send("slash_commands", {"command": "/nbenv", "text": "help"})
        _receive(app)
        with pytest.raises(TimeoutError):
            app.recv(timeout=DEADLINE_S * 3)

    assert delivery.missed and socket_mode.retries_of(delivery) == []
