"""Only Slack can talk to the bot, a retried request has one effect, and bad input is
turned down with a clear answer that changes nothing."""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

import pytest

from tests.conftest import OWNER, TESTER
from tests.slack.bot import (
    SECRET,
    BotServer,
    audit,
    buttons,
    channel_messages,
    published,
    wait_message,
)
from tests.support.slack_api import FakeSlackApi


def _frozen(rt, image: str) -> bool:  # type: ignore[no-untyped-def]
    with rt.store.read() as tx:
        return tx.freezes.get(image) is not None


def _send(server: BotServer, case: str, body: bytes):  # type: ignore[no-untyped-def]
    now = int(time.time())
    if case == "forged":
        return server.signed(body, secret="not-" + SECRET)
    if case == "altered":
        ts = str(now)
        from slack_sdk.signature import SignatureVerifier

        signature = SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body)
        tampered = body.replace(b"maintenance", b"hostile+takeover")
        assert tampered != body
        return server.post(
            "/slack/events",
            tampered,
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Slack-Request-Timestamp": ts,
                "X-Slack-Signature": signature,
            },
        )
    if case == "expired":
        return server.signed(body, timestamp=now - 5 * 60 - 30)
    if case == "from the future":
        return server.signed(body, timestamp=now + 5 * 60 + 30)
    if case == "missing":
        return server.post(
            "/slack/events", body, {"Content-Type": "application/x-www-form-urlencoded"}
        )
    if case == "garbled":
        return server.post(
            "/slack/events",
            body,
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Slack-Request-Timestamp": "yesterday",
                "X-Slack-Signature": "v0=zz",
            },
        )
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["forged", "altered", "expired", "from the future", "missing", "garbled"]
)
def test_unsigned_or_badly_signed_requests_get_401_and_change_nothing(
    server: BotServer, rt, image: str, case: str
) -> None:  # type: ignore[no-untyped-def]
    body = server.slash_body(OWNER, f"freeze {image} maintenance")
    before = audit(rt, image)

    answer = _send(server, case, body)

    assert answer.status == 401
    assert "froze" not in answer.text
    assert not _frozen(rt, image)
    assert audit(rt, image) == before
    # The very same request, properly signed, is accepted: the refusal was the signature's.
    genuine = server.signed(body)
    assert genuine.status == 200 and "froze" in genuine.shown
    assert _frozen(rt, image)


def test_a_retried_slash_command_has_one_effect(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    body = server.slash_body(OWNER, f"freeze {image} release week", trigger="123.456.retry")

    answers = [server.signed(body), server.signed(body, retry=1), server.signed(body, retry=2)]

    assert [a.status for a in answers] == [200, 200, 200]
    assert "froze" in answers[0].shown
    assert all("already" in a.shown for a in answers[1:])
    assert [e.action for e in audit(rt, image)] == ["freeze"]
    wait_message(slack, f"froze {image}")
    time.sleep(0.6)  # a second announcement would be delivered by now
    assert len(channel_messages(slack, f"froze {image}")) == 1


def test_a_retried_button_press_has_one_effect(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    commit = published(rt, image)
    thread_root = wait_message(slack, f"now in staging for {image}")
    approve = buttons({"blocks": thread_root.blocks})["Approve"]
    url = slack.response_url(f"retry-{image}")

    for retry in (None, 1, 2):
        answer = server.action(
            TESTER, approve, response_url=url, action_ts="1700000123.000001", retry=retry
        )
        assert answer.status == 200

    wait_message(slack, f"approved `{commit[:7]}`")
    time.sleep(0.6)  # a second announcement would be delivered by now
    assert len(channel_messages(slack, f"approved `{commit[:7]}`")) == 1
    assert [e.action for e in audit(rt, image)].count("approve") == 1
    with rt.store.read() as tx:
        assert [v.user for v in tx.approvals.standing(image, commit)] == [TESTER]


def test_health_check(server: BotServer) -> None:
    response = server.http.get(f"{server.url}/healthz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "background": True}


def test_job_push_endpoint_is_off_without_gcp_settings(server: BotServer) -> None:
    answer = server.post("/pubsub/jobs", b"{}", {"Content-Type": "application/json"})
    assert answer.status == 404
    assert "gcp.jobs_audience" in answer.text


def test_malformed_but_signed_payloads_are_refused_without_effect(
    server: BotServer, rt, image: str
) -> None:  # type: ignore[no-untyped-def]
    before = audit(rt, image)
    not_json = server.signed(urlencode({"payload": "{not json"}).encode())
    unknown_type = server.signed(
        urlencode({"payload": json.dumps({"type": "mystery", "user": {"id": OWNER}})}).encode()
    )
    assert not_json.status >= 400
    assert unknown_type.status >= 400
    assert audit(rt, image) == before


def test_forged_button_values_are_refused_with_a_clear_answer(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    published(rt, image)
    before = audit(rt, image)
    url = slack.response_url(f"forged-{image}")
    element = {
        "action_id": "nbenv_approve",
        "text": {"type": "plain_text", "text": "Approve"},
        "value": "{not json",
    }
    assert server.action(TESTER, element, response_url=url).status == 200

    from tests.slack.bot import wait_response

    answer = wait_response(slack, url)
    assert "malformed" in answer["text"]
    assert answer["response_type"] == "ephemeral"
    assert audit(rt, image) == before


# -- only people are people: an ID that is not a Slack user's acts as no one ---------------

IMPOSTORS = ["build:evil", "build:x", "alice", "u01owner", "", "U" + "0" * 40]


def _refused_as_malformed(answer) -> None:  # type: ignore[no-untyped-def]
    assert answer.status == 400, answer
    # An empty ID is caught with the request's shape, any other by its form.
    assert "is not a Slack user ID" in answer.text or "user_id is missing" in answer.text
    assert "nothing was changed" in answer.text
    assert len(answer.text.strip().splitlines()) == 1


@pytest.mark.parametrize("impostor", IMPOSTORS)
def test_a_slash_command_from_no_slack_user_is_refused_and_changes_nothing(
    server: BotServer, rt, image: str, impostor: str
) -> None:  # type: ignore[no-untyped-def]
    before = audit(rt, image)

    _refused_as_malformed(server.slash(impostor, f"freeze {image} hostile takeover"))

    assert not _frozen(rt, image)
    assert audit(rt, image) == before


def test_a_button_press_or_dialog_from_no_slack_user_is_refused_and_changes_nothing(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    from bot.slack import views

    commit = published(rt, image)
    root = wait_message(slack, f"now in staging for {image}")
    shown = buttons({"blocks": root.blocks})
    url = slack.response_url(f"impostor-{image}")
    dialog = views.reject_dialog(
        image, commit, {"image": image, "sha": commit, "response_url": url}
    )
    reason = {"reason": {"reason_input": {"value": "not a person"}}}
    before, opened = audit(rt, image), len(slack.calls("views.open"))

    for impostor in ("build:x", "alice"):
        _refused_as_malformed(server.action(impostor, shown["Approve"], response_url=url))
        _refused_as_malformed(server.action(impostor, shown["Reject"], response_url=url))
        _refused_as_malformed(server.submit(impostor, {**dialog, "id": "V0FORGED"}, reason))

    with rt.store.read() as tx:
        assert tx.approvals.standing(image, commit) == []
    assert audit(rt, image) == before
    assert len(slack.calls("views.open")) == opened
    # The very same press by a tester counts: only the presser's ID was refused.
    assert server.action(TESTER, shown["Approve"], response_url=url).status == 200
    wait_message(slack, f"approved `{commit[:7]}`")


def test_the_home_tab_is_published_for_slack_users_only(
    server: BotServer, slack: FakeSlackApi
) -> None:
    published_before = len(slack.calls("views.publish"))
    event = {"type": "app_home_opened", "channel": "D0HOME", "tab": "home", "event_ts": "1.2"}

    _refused_as_malformed(server.event({**event, "user": "build:x"}))

    assert server.event({**event, "user": OWNER}).status == 200
    calls = slack.wait_for("views.publish", published_before + 1)
    assert [c.args["user_id"] for c in calls[published_before:]] == [OWNER]
