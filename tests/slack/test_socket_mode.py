"""`nbenv socket` end to end: the real process, Bolt's Socket Mode adapter and slack_sdk's
WebSocket client, against a fake Slack that opens the connection (apps.connections.open
with the app-level token) and sends envelopes as Slack does (tests/support/socket_mode.py).

The same commands as the HTTP tests, with the same answers and the same effects; every
envelope acknowledged over the socket within Slack's 3 s; reconnection after Slack's
``disconnect`` and after a dropped connection, without losing or doubling a command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TESTER, USER
from tests.slack.bot import (
    CHANNEL,
    TEAM,
    TOKEN,
    Message,
    audit,
    blocks_text,
    buttons,
    channel_messages,
    published,
    slash_fields,
    wait_message,
    wait_response,
)
from tests.support.slack_api import APP_ID, FakeSlackApi
from tests.support.socket_mode import ACK_DEADLINE_S, Delivery, FakeSocketMode

APP_TOKEN = "xapp-1-A0NBENVAPP-1-test"


class SocketBot:
    """`nbenv socket` in its own process, pointed at the fake Slack."""

    def __init__(self, *, config: Path, db_url: str, home: Path, slack: FakeSlackApi) -> None:
        self.config = config
        self.db_url = db_url
        self.home = home
        self.slack = slack
        self.log = home / "socket.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SocketBot:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("SLACK_SIGNING_SECRET", "PORT")}
        env.update(
            SLACK_APP_TOKEN=APP_TOKEN,
            SLACK_BOT_TOKEN=TOKEN,
            SLACK_API_URL=self.slack.base_url,
            NBENV_CONFIG=str(self.config),
            NBENV_DATABASE_URL=self.db_url,
            NBENV_HOME=str(self.home),
            PYTHONFAULTHANDLER="1",  # a hang at stop shows its threads in the log
        )
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot", "socket"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGABRT)  # faulthandler dumps every thread
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(5)
                return None
        code = self.process.returncode
        self.process = None
        return code


@pytest.fixture(scope="module")
def socket_mode(slack: FakeSlackApi) -> Iterator[FakeSocketMode]:
    with FakeSocketMode(slack) as fake:
        yield fake
        # Every envelope of the module was acknowledged in time, but those a test cut off
        # with their connection and had Slack deliver again.
        missed = [d for d in fake.deliveries() if d.missed and d.redelivered_as is None]
        assert missed == [], f"unacknowledged within {ACK_DEADLINE_S}s: {missed}"
        assert fake.refused == []


@pytest.fixture(scope="module")
def bot(
    config_path: Path,
    database: str,
    workdir: Path,
    slack: FakeSlackApi,
    socket_mode: FakeSocketMode,
) -> Iterator[SocketBot]:
    process = SocketBot(config=config_path, db_url=database, home=workdir / "home", slack=slack)
    process.start()
    try:
        socket_mode.wait_connected(timeout=60)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def rt(bot: SocketBot, config_path: Path, database: str) -> Any:
    from bot.bootstrap import build_runtime

    return build_runtime(str(config_path), database, migrate=False)


# -- what Slack sends over the socket (shapes as in tests/slack/bot.py, as JSON) -----------


def slash(user: str, text: str, *, response_url: str, trigger: str | None = None) -> dict[str, Any]:
    return slash_fields(user, text, response_url=response_url, trigger=trigger)


def press(
    user: str, element: dict[str, Any], message: Message, response_url: str
) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
        "api_app_id": APP_ID,
        "token": "verification-token-unused",
        "container": {
            "type": "message",
            "message_ts": message.ts,
            "channel_id": message.channel,
            "is_ephemeral": False,
        },
        "trigger_id": f"{uuid.uuid4().int % 10**13}.1.{uuid.uuid4().hex}",
        "team": {"id": TEAM, "domain": "nbenv-test"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": CHANNEL, "name": "nlp-images"},
        "message": {"type": "message", "ts": message.ts, "text": message.text},
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [
            {
                "action_id": element["action_id"],
                "block_id": "b1",
                "text": element["text"],
                "value": element.get("value", ""),
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


def submission(user: str, view: dict[str, Any], reason: str) -> dict[str, Any]:
    submitted = {**view, "state": {"values": {"reason": {"reason_input": {"value": reason}}}}}
    return {
        "type": "view_submission",
        "team": {"id": TEAM, "domain": "nbenv-test"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
        "api_app_id": APP_ID,
        "token": "verification-token-unused",
        "trigger_id": f"{uuid.uuid4().int % 10**13}.1.{uuid.uuid4().hex}",
        "view": submitted,
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def event(inner: dict[str, Any]) -> dict[str, Any]:
    return {
        "token": "verification-token-unused",
        "team_id": TEAM,
        "api_app_id": APP_ID,
        "event": inner,
        "type": "event_callback",
        "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time()),
        "authorizations": [
            {
                "team_id": TEAM,
                "user_id": "U0NBENVBOT",
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
    }


def acked_in_time(socket_mode: FakeSocketMode, delivery: Delivery) -> dict[str, Any]:
    """The ack of DELIVERY, checked to have come within Slack's deadline."""
    ack = socket_mode.wait_ack(delivery, timeout=ACK_DEADLINE_S + 2)
    assert delivery.ack_delay_s is not None and delivery.ack_delay_s <= ACK_DEADLINE_S
    assert ack["envelope_id"] == delivery.envelope_id
    return ack


def ask(socket_mode: FakeSocketMode, slack: FakeSlackApi, user: str, text: str) -> str:
    """`/nbenv TEXT` over the socket: what USER sees, from the ack or the response_url."""
    url = slack.response_url(f"socket-{uuid.uuid4().hex}")
    delivery = socket_mode.send("slash_commands", slash(user, text, response_url=url))
    ack = acked_in_time(socket_mode, delivery)
    shown = blocks_text(ack["payload"]) if ack.get("payload") else ""
    if shown and not shown.startswith("⏳"):
        assert ack["payload"]["response_type"] == "ephemeral"
        return shown
    reply = wait_response(slack, url)
    assert reply["response_type"] == "ephemeral"
    return blocks_text(reply)


# -- the tests ----------------------------------------------------------------------------


def test_the_app_token_opens_the_connection_and_the_bot_token_is_refused(
    bot: SocketBot, slack: FakeSlackApi, socket_mode: FakeSocketMode
) -> None:
    (opened, *_) = slack.calls("apps.connections.open")
    assert opened.token == APP_TOKEN and opened.response and opened.response["ok"]
    assert "token" not in opened.args  # in the Authorization header, as Slack requires
    assert socket_mode.handshakes_refused == 0

    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    with pytest.raises(SlackApiError) as refused:
        WebClient(base_url=slack.base_url).apps_connections_open(app_token=TOKEN)
    assert refused.value.response["error"] == "not_allowed_token_type"


def test_a_status_read_answers_as_over_http(
    bot: SocketBot, rt: Any, image: str, slack: FakeSlackApi, socket_mode: FakeSocketMode
) -> None:
    commit = published(rt, image)
    url = slack.response_url(f"status-{uuid.uuid4().hex}")

    acked = socket_mode.send("slash_commands", slash(USER, f"status {image}", response_url=url))
    one = ask(socket_mode, slack, USER, f"status {image}")
    everything = ask(socket_mode, slack, USER, "status")

    # as tests/slack/test_commands.py shows over HTTP: acked at once, the answer follows
    assert acked_in_time(socket_mode, acked) == {"envelope_id": acked.envelope_id}
    assert f"staging: `{commit[:7]}`" in one
    assert "production: —" in one
    assert f"*{image}*" in everything
    assert "vision.pytorch-gpu" not in everything  # not U06USER's team


def test_an_approval_is_recorded_audited_and_announced_as_over_http(
    bot: SocketBot, rt: Any, image: str, slack: FakeSlackApi, socket_mode: FakeSocketMode
) -> None:
    commit = published(rt, image)

    shown = ask(socket_mode, slack, TESTER, f"approve {image}")

    assert f"approved `{commit[:7]}`" in shown
    with rt.store.read() as tx:
        assert [(v.user, v.approved) for v in tx.approvals.standing(image, commit)] == [
            (TESTER, True)
        ]
    assert audit(rt, image)[-1].action == "approve"
    root = wait_message(slack, f"now in staging for {image}")
    reply = wait_message(slack, f"<@{TESTER}> approved `{commit[:7]}`")
    assert reply.thread_ts == root.ts


def test_a_button_press_and_the_app_home_are_acknowledged_and_acted_on(
    bot: SocketBot, rt: Any, image: str, slack: FakeSlackApi, socket_mode: FakeSocketMode
) -> None:
    commit = published(rt, image)
    root = wait_message(slack, f"now in staging for {image}")
    url = slack.response_url(f"press-{uuid.uuid4().hex}")

    pressed = socket_mode.send(
        "interactive", press(TESTER, buttons({"blocks": root.blocks})["Approve"], root, url)
    )
    before = len(slack.calls("views.publish"))
    opened = socket_mode.send(
        "events_api",
        event({"type": "app_home_opened", "user": TESTER, "tab": "home", "event_ts": "1.0"}),
    )

    assert "payload" not in acked_in_time(socket_mode, pressed)  # Slack takes no answer here
    acked_in_time(socket_mode, opened)
    assert f"approved `{commit[:7]}`" in blocks_text(wait_response(slack, url))
    slack.wait_for("views.publish", before + 1)
    assert image in blocks_text(slack.home_view(TESTER) or {})
    assert socket_mode.refused == []


def test_the_reject_dialog_answers_in_the_ack_of_its_submission(
    bot: SocketBot, rt: Any, image: str, slack: FakeSlackApi, socket_mode: FakeSocketMode
) -> None:
    commit = published(rt, image)
    root = wait_message(slack, f"now in staging for {image}")
    opened = len(slack.calls("views.open"))
    url = slack.response_url(f"reject-{uuid.uuid4().hex}")
    pressed = socket_mode.send(
        "interactive", press(TESTER, buttons({"blocks": root.blocks})["Reject"], root, url)
    )
    acked_in_time(socket_mode, pressed)
    view = slack.wait_for("views.open", opened + 1)[-1].response["view"]

    empty = socket_mode.send("interactive", submission(TESTER, view, "   "))
    refused = acked_in_time(socket_mode, empty)["payload"]
    with rt.store.read() as tx:
        assert tx.approvals.standing(image, commit) == []
    done = acked_in_time(
        socket_mode, socket_mode.send("interactive", submission(TESTER, view, "no"))
    )

    # as tests/slack/test_buttons.py shows over HTTP
    assert refused["response_action"] == "errors" and "reason" in refused["errors"]
    assert "payload" not in done  # the dialog closes
    reply = wait_message(slack, f"<@{TESTER}> rejected")
    assert reply.thread_ts == root.ts
    with rt.store.read() as tx:
        (verdict,) = tx.approvals.standing(image, commit)
    assert (verdict.user, verdict.approved, verdict.reason) == (TESTER, False, "no")


def test_what_the_bot_does_not_handle_is_still_acknowledged(
    bot: SocketBot, rt: Any, image: str, slack: FakeSlackApi, socket_mode: FakeSocketMode
) -> None:
    """Unacknowledged, Slack shows the person an error or sends the event again and
    again: every envelope gets its ack, even one the bot refuses or ignores."""
    url = slack.response_url(f"hostile-{uuid.uuid4().hex}")
    deliveries = [
        # a request naming no person (over HTTP: 400, nothing changed)
        socket_mode.send(
            "slash_commands", slash("build:ci", f"freeze {image} x", response_url=url)
        ),
        # an event no listener wants
        socket_mode.send(
            "events_api",
            event({"type": "reaction_added", "user": TESTER, "reaction": "+1", "event_ts": "1.0"}),
        ),
        # a button from some other app's message
        socket_mode.send(
            "interactive",
            press(TESTER, {"action_id": "other_app", "text": {}}, _nowhere(), url),
        ),
    ]

    for delivery in deliveries:
        acked_in_time(socket_mode, delivery)
    assert not [d for d in socket_mode.deliveries() if d.missed]
    assert audit(rt, image) == []  # nothing was changed


def _nowhere() -> Message:
    return Message(channel=CHANNEL, ts="1700000000.000100", text="someone else's")


def test_the_bot_reconnects_when_slack_asks_and_loses_no_command(
    bot: SocketBot, rt: Any, image: str, slack: FakeSlackApi, socket_mode: FakeSocketMode
) -> None:
    commit = published(rt, image)
    opened = socket_mode.connections_opened
    url = slack.response_url(f"refresh-{uuid.uuid4().hex}")

    # a command in flight when Slack asks for the refresh: its ack goes out meanwhile
    in_between = socket_mode.send(
        "slash_commands", slash(TESTER, f"approve {image}", response_url=url)
    )
    old = socket_mode.disconnect("refresh_requested")
    socket_mode.wait_connected(opened + 1)
    after = ask(socket_mode, slack, TESTER, f"status {image}")

    assert in_between.connection == old
    assert f"approved `{commit[:7]}`" in blocks_text(
        acked_in_time(socket_mode, in_between)["payload"]
    )
    assert f"staging: `{commit[:7]}`" in after
    socket_mode.wait_closed(old)  # the app let the old connection go
    assert socket_mode.open_connections() == [opened]
    assert [e.action for e in audit(rt, image)] == ["publish", "approve"]


def test_after_a_dropped_connection_a_redelivered_command_is_acted_on_once(
    bot: SocketBot, rt: Any, image: str, slack: FakeSlackApi, socket_mode: FakeSocketMode
) -> None:
    commit = published(rt, image)
    opened = socket_mode.connections_opened
    url = slack.response_url(f"dropped-{uuid.uuid4().hex}")
    command = slash(TESTER, f"approve {image}", response_url=url)

    first = socket_mode.send("slash_commands", command)
    socket_mode.drop()  # in flight: the ack, if any, is lost with the connection
    socket_mode.wait_connected(opened + 1, timeout=30)
    again = socket_mode.redeliver(first)

    ack = acked_in_time(socket_mode, again)
    # "already …" as a retry over HTTP answers, if the first delivery got through before
    # the connection dropped; the approval itself if it did not
    answer = blocks_text(ack["payload"])
    assert "already" in answer or f"approved `{commit[:7]}`" in answer
    with rt.store.read() as tx:
        assert [(v.user, v.approved) for v in tx.approvals.standing(image, commit)] == [
            (TESTER, True)
        ]
    assert [e.action for e in audit(rt, image)] == ["publish", "approve"]
    wait_message(slack, f"<@{TESTER}> approved `{commit[:7]}`")
    time.sleep(0.6)  # a second announcement would be delivered by now
    assert len(channel_messages(slack, f"<@{TESTER}> approved `{commit[:7]}`")) == 1


def test_a_command_sent_while_the_connection_is_down_is_not_lost(
    bot: SocketBot, rt: Any, image: str, slack: FakeSlackApi, socket_mode: FakeSocketMode
) -> None:
    commit = published(rt, image)
    opened = socket_mode.connections_opened
    socket_mode.drop()

    # Slack holds it until the app is back
    shown = ask(socket_mode, slack, TESTER, f"approve {image}")

    assert socket_mode.connections_opened == opened + 1
    assert f"approved `{commit[:7]}`" in shown
    assert [e.action for e in audit(rt, image)] == ["publish", "approve"]


def test_the_bot_stops_cleanly_on_ctrl_c(config_path: Path, workdir: Path) -> None:
    with FakeSlackApi() as slack, FakeSocketMode(slack) as socket_mode:
        second = SocketBot(
            config=config_path,
            db_url=f"sqlite:///{workdir / 'second.db'}",
            home=workdir / "second",
            slack=slack,
        ).start()
        try:
            socket_mode.wait_connected(timeout=60)
        finally:
            code = second.stop()
        assert code == 0
        socket_mode.wait_closed(0)


def test_a_refused_app_token_is_one_clear_line(config_path: Path, workdir: Path) -> None:
    with FakeSlackApi() as slack, FakeSocketMode(slack):
        slack.refuse("invalid_auth", method="apps.connections.open")
        refused = SocketBot(
            config=config_path,
            db_url=f"sqlite:///{workdir / 'refused.db'}",
            home=workdir / "refused",
            slack=slack,
        ).start()
        assert refused.process is not None
        code = refused.process.wait(60)
        log = refused.log.read_text("utf-8")

    assert code == 2
    assert "Slack refused to open a Socket Mode connection (invalid_auth)" in log
    assert "Traceback" not in log
