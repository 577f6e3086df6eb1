"""Everything Slack sends to `nbenv serve`, fuzzed over real HTTP with really signed
requests: slash command text and forms, button presses (block_actions), dialog
submissions (view_submission), and the signature headers.

The properties, for any request: never a 5xx and never a traceback in the server's log;
a 4xx says in one line what is wrong; a request turned down (4xx, or an answer with ⚠️)
changes nothing but the refusal it logs; a well-formed request whose fields were broken
does at most what it would have done whole (a tester's word on the SHA in staging); and
the time to answer grows linearly with the request.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from slack_sdk.signature import SignatureVerifier

from bot.slack import views
from tests.conftest import OWNER, STRANGER, TESTER, USER
from tests.fuzz.state import Snapshot, snapshot
from tests.fuzz.strategies import (
    DEEP,
    Path_,
    apply,
    assert_linear,
    command_text,
    encoded,
    header_text,
    hostile,
    mutated,
    nasty_text,
    one_line,
)
from tests.slack.bot import SECRET, TEAM, Answer, BotServer, published
from tests.support.slack_api import FakeSlackApi

FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Fields of a form are text; within the 1 MB a request may carry.
form_values = st.one_of(nasty_text, st.text(max_size=30), hostile(huge=100_000).map(str))


def _form_bytes(fields: Any) -> bytes:
    """A form body; text that is not UTF-8 (a lone surrogate) goes as the bytes it would be.
    FIELDS not a form (the whole body replaced): sent as it is."""
    if not isinstance(fields, dict):
        return str(fields).encode("utf-8", "surrogatepass")
    return urlencode(
        {str(k): str(v).encode("utf-8", "surrogatepass") for k, v in fields.items()}
    ).encode()


def _payload_body(payload: Any) -> bytes:
    # Arrays nested 5,000 deep: deeper than any parser recursion limit, within 1 MB.
    return urlencode({"payload": encoded(payload, depth=5_000)}).encode()


def check_answer(answer: Answer) -> bool:
    """The HTTP answer is a proper one; whether it turned the request down."""
    assert answer.status < 500, (answer.status, answer.text[:500])
    if answer.status >= 400:
        assert answer.status in (400, 401, 404, 413), (answer.status, answer.text[:500])
        message = answer.text
        if answer.text.startswith("{"):
            message = answer.json.get("error", "")
        assert one_line(message.strip()), answer.text[:500]
        return True
    assert answer.status == 200, answer.text[:500]
    if not answer.text:
        return False
    body = answer.json
    if "response_action" in body:  # a dialog's errors
        return body["response_action"] == "errors"
    assert body.get("response_type") == "ephemeral", body
    return "⚠️" in answer.shown


# -- the slash command -----------------------------------------------------------------------


@FUZZ
@given(actor=st.sampled_from([TESTER, USER, STRANGER]), data=st.data())
@example(actor=TESTER, data=None)
def test_any_slash_command_text(
    server: BotServer, rt: Any, image: str, log: Any, actor: str, data: Any
) -> None:
    text = data.draw(command_text(image)) if data is not None else f"approve {image} '"
    commit = _staged(rt, image)
    before = snapshot(rt, image)

    form = dict(parse_qsl(server.slash_body(actor, "").decode(), keep_blank_values=True))
    turned_down = check_answer(server.signed(_form_bytes({**form, "text": text})))

    after = snapshot(rt, image)
    if turned_down:
        assert after.same_but_refusals(before), (actor, text)
    else:
        assert after.same_but(before, user=actor, sha=commit), (actor, text)


def _slash_form(server: BotServer, image: str) -> dict[str, str]:
    body = server.slash_body(TESTER, f"approve {image}")
    return dict(parse_qsl(body.decode(), keep_blank_values=True))


@FUZZ
@given(data=st.data())
def test_any_field_of_a_slash_command_form(
    server: BotServer, rt: Any, image: str, log: Any, data: Any
) -> None:
    commit = _staged(rt, image)
    form = _slash_form(server, image)
    where, how, value = data.draw(mutated(form, form_values))
    before = snapshot(rt, image)

    turned_down = check_answer(server.signed(_form_bytes(apply(form, where, how, value))))

    after = snapshot(rt, image)
    if turned_down:
        assert after.same_but_refusals(before), (where, how, value)
    else:
        assert after.same_but(before, user=TESTER, sha=commit), (where, how, value)


# -- buttons and the reject dialog -----------------------------------------------------------


def _press(image: str, commit: str, user: str, action_id: str, value: Any) -> dict[str, Any]:
    """A block_actions payload as Slack sends it for a button of a thread message."""
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
        "api_app_id": "A0NBENVAPP",
        "token": "verification-token-unused",
        "container": {
            "type": "message",
            "message_ts": "1700000000.000100",
            "channel_id": "C01NLP",
            "is_ephemeral": False,
        },
        "trigger_id": f"{uuid.uuid4().int % 10**13}.1.{uuid.uuid4().hex}",
        "team": {"id": TEAM, "domain": "nbenv-test"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": "C01NLP", "name": "nlp-images"},
        "message": {"type": "message", "ts": "1700000000.000100", "text": f"{image} {commit}"},
        "state": {"values": {}},
        "response_url": "",
        "actions": [
            {
                "action_id": action_id,
                "block_id": "b1",
                "text": {"type": "plain_text", "text": "Press"},
                "value": json.dumps(value),
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


BUTTONS = {
    # what is pressed, by whom, with what value
    "approve": (TESTER, "nbenv_approve", lambda image, sha: {"image": image, "sha": sha}),
    "reject": (TESTER, "nbenv_reject", lambda image, sha: {"image": image, "sha": sha}),
    "promote": (OWNER, "nbenv_promote", lambda image, sha: {"image": image, "sha": sha}),
    "cancel": (OWNER, views.CANCEL, lambda image, sha: {"image": image}),
    "confirm": (
        TESTER,
        views.CONFIRM,
        lambda image, sha: {
            "image": image,
            "cmd": {"name": "promote", "image": image, "confirmed": True},
            "expect": {"staging": 1, "production": 0, "fallback": 0},
        },
    ),
}


@FUZZ
@given(button=st.sampled_from(sorted(BUTTONS)), inside=st.booleans(), data=st.data())
def test_any_field_of_a_button_press(
    server: BotServer,
    slack: FakeSlackApi,
    rt: Any,
    image: str,
    log: Any,
    button: str,
    inside: bool,
    data: Any,
) -> None:
    """A press with one field broken, in the payload or in the button's value."""
    commit = _staged(rt, image)
    user, action_id, value_of = BUTTONS[button]
    value = value_of(image, commit)
    payload = _press(image, commit, user, action_id, value)
    payload["response_url"] = slack.response_url(f"fuzz-{uuid.uuid4().hex}")
    if inside:
        where, how, bad = data.draw(mutated(value))
        payload["actions"][0]["value"] = encoded(apply(value, where, how, bad), depth=5_000)
    else:
        where, how, bad = data.draw(mutated(payload))
        payload = apply(payload, where, how, bad)
    before = snapshot(rt, image)

    turned_down = check_answer(server.signed(_payload_body(payload)))

    after = snapshot(rt, image)
    if turned_down:
        assert after.same_but_refusals(before), (button, where, how, bad)
    else:
        # Any press is answered later, privately: at most the tester's word on the SHA.
        assert after.same_but(before, user=TESTER, sha=commit), (button, where, how, bad)


def _submission(image: str, commit: str, response_url: str) -> dict[str, Any]:
    """A view_submission of the reject dialog as the bot opens it, with a reason typed."""
    metadata = {"image": image, "sha": commit, "response_url": response_url}
    view = views.reject_dialog(image, commit, metadata)
    view.update(
        {
            "id": f"V{uuid.uuid4().hex[:10].upper()}",
            "team_id": TEAM,
            "state": {
                "values": {views.REASON_BLOCK: {views.REASON_INPUT: {"value": "breaks tokens"}}}
            },
            "hash": "1700000000.abcdef",
            "app_id": "A0NBENVAPP",
        }
    )
    return {
        "type": "view_submission",
        "team": {"id": TEAM, "domain": "nbenv-test"},
        "user": {"id": TESTER, "username": "tester", "name": "tester", "team_id": TEAM},
        "api_app_id": "A0NBENVAPP",
        "token": "verification-token-unused",
        "trigger_id": f"{uuid.uuid4().int % 10**13}.1.{uuid.uuid4().hex}",
        "view": view,
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


@FUZZ
@given(inside=st.booleans(), data=st.data())
@example(inside=False, data=None)
def test_any_field_of_a_dialog_submission(
    server: BotServer,
    slack: FakeSlackApi,
    rt: Any,
    image: str,
    log: Any,
    inside: bool,
    data: Any,
) -> None:
    """The reject dialog submitted with one field broken, or its private_metadata."""
    commit = _staged(rt, image)
    payload = _submission(image, commit, slack.response_url(f"fuzz-{uuid.uuid4().hex}"))
    if data is None:
        where, how, bad = ("view", "state", "values", views.REASON_BLOCK), "replace", DEEP
        payload = apply(payload, where, how, bad)
    elif inside:
        metadata = json.loads(payload["view"]["private_metadata"])
        where, how, bad = data.draw(mutated(metadata))
        payload["view"]["private_metadata"] = encoded(apply(metadata, where, how, bad), 5_000)
    else:
        where, how, bad = data.draw(mutated(payload))
        payload = apply(payload, where, how, bad)
    before = snapshot(rt, image)

    turned_down = check_answer(server.signed(_payload_body(payload)))

    after = snapshot(rt, image)
    if turned_down:
        assert after.same_but_refusals(before), (where, how, bad)
    else:
        assert after.same_but(before, user=TESTER, sha=commit), (where, how, bad)


@pytest.mark.parametrize(
    ("kind", "where", "value"),
    [
        ("press", ("type",), []),
        ("press", ("response_url",), "javascript:alert(1)"),
        ("press", ("team",), True),
        ("press", ("enterprise",), "E1"),
        ("press", ("channel",), 5),
        ("press", ("container",), ["x"]),
        ("press", ("user", "team_id"), {"id": 1}),
        ("dialog", ("team",), 1),
        ("dialog", ("view", "type"), None),
        ("dialog", ("view", "team_id"), []),
    ],
)
def test_a_field_of_a_type_slack_never_sends_is_a_400_not_a_500(
    server: BotServer,
    slack: FakeSlackApi,
    rt: Any,
    image: str,
    log: Any,
    kind: str,
    where: Path_,
    value: Any,
) -> None:
    """Bolt reads `team`, `enterprise`, `channel`, `view.type`… of every request before
    any listener: of another type than Slack's, they crashed it (a 500 and a traceback)."""
    commit = _staged(rt, image)
    url = slack.response_url(f"typed-{uuid.uuid4().hex}")
    if kind == "press":
        payload = _press(image, commit, TESTER, "nbenv_approve", {"image": image, "sha": commit})
    else:
        payload = _submission(image, commit, url)
    payload = apply(payload, where, "remove" if value is None else "replace", value)
    before = snapshot(rt, image)

    answer = server.signed(_payload_body(payload))

    assert answer.status in (200, 400), answer.text[:300]
    check_answer(answer)
    if answer.status == 400:
        assert snapshot(rt, image) == before


@pytest.mark.parametrize("field", ["response_url", "trigger_id"])
@pytest.mark.parametrize("button", ["reject", "approve"])
def test_a_response_url_or_trigger_longer_than_slacks_is_a_400(
    server: BotServer, slack: FakeSlackApi, rt: Any, image: str, log: Any, field: str, button: str
) -> None:
    """The reject dialog carries the response_url in its private_metadata (3,000
    characters at most): a longer one made views.open fail after the ack, with a
    traceback and no dialog."""
    commit = _staged(rt, image)
    user, action_id, value_of = BUTTONS[button]
    payload = _press(image, commit, user, action_id, value_of(image, commit))
    payload["response_url"] = slack.response_url(f"long-{uuid.uuid4().hex}")
    payload[field] += "x" * 3_000
    before = snapshot(rt, image)

    answer = server.signed(_payload_body(payload))

    assert answer.status == 400 and f"{field} is longer" in answer.json["error"]
    assert snapshot(rt, image) == before


def _event(user: str) -> dict[str, Any]:
    """An event_callback envelope: the App Home opened by USER."""
    return {
        "token": "verification-token-unused",
        "team_id": TEAM,
        "api_app_id": "A0NBENVAPP",
        "event": {"type": "app_home_opened", "user": user, "tab": "home", "event_ts": "1.0"},
        "type": "event_callback",
        "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM, "user_id": "U0NBENVBOT", "is_bot": True}],
    }


@FUZZ
@given(data=st.data())
def test_any_field_of_an_event(server: BotServer, rt: Any, image: str, log: Any, data: Any) -> None:
    """An App Home opened, one field of the event broken: never a 5xx, nothing changes."""
    _staged(rt, image)
    event = _event(USER)
    event = apply(event, *data.draw(mutated(event)))
    before = snapshot(rt, image)

    check_answer(
        server.signed(encoded(event, depth=5_000).encode(), content_type="application/json")
    )

    assert snapshot(rt, image) == before


# -- the signature -------------------------------------------------------------------------


def _header_bytes(value: str) -> bytes:
    return value.encode("latin-1")


@FUZZ
@given(
    timestamp=st.one_of(st.none(), header_text),
    signature=st.one_of(st.none(), header_text, st.just("sign it")),
    retry=st.one_of(st.none(), header_text),
)
@example(timestamp="9" * 400, signature="sign it", retry=None)
@example(timestamp="1700000000", signature="sign it", retry="²")
@example(timestamp=None, signature=None, retry=None)
def test_any_signature_headers_but_the_right_ones_are_401_and_change_nothing(
    server: BotServer,
    rt: Any,
    image: str,
    log: Any,
    timestamp: str | None,
    signature: str | None,
    retry: str | None,
) -> None:
    """Missing, malformed, huge, stale, or signed with a timestamp that is not now: a
    freeze by an owner does not happen, and the answer is a one-line 4xx."""
    body = server.slash_body(OWNER, f"freeze {image} fuzzing the signature")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if timestamp is not None:
        headers["X-Slack-Request-Timestamp"] = timestamp
    if signature == "sign it":  # the right signature, over a timestamp that is not now
        signature = SignatureVerifier(SECRET).generate_signature(
            timestamp=timestamp or "", body=body
        )
    if signature is not None:
        headers["X-Slack-Signature"] = signature
    if retry is not None:
        headers["X-Slack-Retry-Num"] = retry
    encoded_headers = {k: _header_bytes(v) for k, v in headers.items()}
    before = snapshot(rt, image)

    answer = server.post("/slack/events", body, encoded_headers)  # type: ignore[arg-type]

    assert check_answer(answer)
    assert answer.status in (400, 401), answer.text
    assert snapshot(rt, image) == before


@FUZZ
@given(
    content_type=st.one_of(
        header_text,
        st.sampled_from(["application/json", "application/x-www-form-urlencoded; charset=x"]),
    ),
    retry=st.one_of(st.none(), header_text),
    reason=st.one_of(st.none(), header_text),
)
def test_a_signed_request_with_any_other_headers_is_never_a_5xx(
    server: BotServer,
    rt: Any,
    image: str,
    log: Any,
    content_type: str,
    retry: str | None,
    reason: str | None,
) -> None:
    body = server.slash_body(TESTER, f"approve {image}")
    ts = str(int(time.time()))
    headers = {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body),
    }
    if retry is not None:
        headers["X-Slack-Retry-Num"] = retry
    if reason is not None:
        headers["X-Slack-Retry-Reason"] = reason
    commit = _staged(rt, image)
    before = snapshot(rt, image)

    answer = server.post(
        "/slack/events",
        body,
        {k: _header_bytes(v) for k, v in headers.items()},  # type: ignore[misc]
    )

    if check_answer(answer):
        assert snapshot(rt, image).same_but_refusals(before)
    else:
        assert snapshot(rt, image).same_but(before, user=TESTER, sha=commit)


# -- time --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["slash text", "button value", "dialog reason"])
def test_the_answer_takes_time_linear_in_the_request(
    server: BotServer, slack: FakeSlackApi, rt: Any, image: str, log: Any, kind: str
) -> None:
    commit = _staged(rt, image)
    url = slack.response_url(f"linear-{uuid.uuid4().hex}")

    def body(size: int) -> bytes:
        filler = "x 'y' \"z\" " * (size // 10)
        if kind == "slash text":
            return server.slash_body(USER, f"status {image} {filler}", response_url=url)
        if kind == "button value":
            value = {"image": image, "sha": commit, "junk": [filler] * 3}
            return _payload_body(_press(image, commit, STRANGER, "nbenv_approve", value))
        payload = _submission(image, commit, url)
        payload["user"]["id"] = STRANGER
        payload["view"]["state"]["values"]["reason"]["reason_input"]["value"] = filler
        return _payload_body(payload)

    def send(content: bytes) -> None:
        check_answer(server.signed(content))

    assert_linear(send, body, 20_000, floor_s=0.02)


# -- arranging ---------------------------------------------------------------------------------


def _staged(rt: Any, image: str) -> str:
    """A version of IMAGE in staging (published once per test): something to act on."""
    state: Snapshot = snapshot(rt, image)
    if state.pointers[0][1] is None:
        return published(rt, image)
    return str(state.pointers[0][1])
