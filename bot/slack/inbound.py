"""What a request to /slack/events must look like before Bolt and our listeners see it.

Bolt trusts Slack's shapes: a `payload=` that is not a JSON object, an event that is a
list, a button press without a user, all end in a 500 and a traceback inside Bolt or a
listener. A signed request is still input: these checks turn such a request down with
one reason (a 400), before anything reads it.
"""

from __future__ import annotations

import re
from typing import Any

from slack_bolt.request import BoltRequest
from slack_bolt.request.internals import (
    build_normalized_headers,
    extract_content_type,
    parse_body,
)

MAX_BODY = 1024 * 1024
"""Bytes of one request body. Slack's largest payloads — a button press or an App Home
event carrying a whole message or view (at most 50 or 100 blocks of 3,000 characters),
JSON inside a form field — stay well under this; reading and parsing 1 MB takes
milliseconds."""

MAX_HANDLE = 1000  # characters of a response_url or trigger_id

# A Unix time in seconds: ASCII digits only (str.isdigit also accepts `²` and `١`, which
# crash Bolt's verifier), and few enough that int() and float() stay sane.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")

# Interactions whose listeners act as `user.id`.
_INTERACTIONS_WITH_USER = frozenset(
    {
        "block_actions",
        "block_suggestion",
        "view_submission",
        "view_closed",
        "shortcut",
        "message_action",
        "interactive_message",
    }
)
# Events whose listeners act as `event.user`.
_EVENTS_WITH_USER = frozenset({"app_home_opened", "member_joined_channel"})


class MalformedRequest(ValueError):
    """The request is not shaped like anything Slack sends; the message says how."""


def timestamp_is_plain(value: str | None) -> bool:
    """Whether an X-Slack-Request-Timestamp can be a Unix time at all."""
    return value is not None and _TIMESTAMP.fullmatch(value) is not None


def bolt_request(text: str, query: str, headers: Any) -> BoltRequest:
    """The request Bolt's Flask adapter would build from TEXT, QUERY and HEADERS, its body
    checked: a JSON object of a shape our listeners can act on. The body is parsed once,
    by Bolt, and the request handed to `App.dispatch` as it is. Raises MalformedRequest."""
    try:
        request = BoltRequest(body=text, query=query, headers=headers)
    except Exception as error:
        # Bolt's parser, or what it reads from the body (`team`, `user`, `channel`… of
        # the types Slack sends), gave up: say why, as check_body does.
        check_body(text, extract_content_type(build_normalized_headers(headers)))
        raise MalformedRequest(
            f"a field is not of the type Slack sends ({type(error).__name__})"
        ) from None
    _check_parsed(request.body)
    return request


def check_body(text: str, content_type: str | None) -> dict[str, Any]:
    """TEXT as Bolt will read it (Bolt's own parser), checked: a JSON object of a shape our
    listeners can act on. Raises MalformedRequest."""
    try:
        body = parse_body(text, content_type)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        if content_type == "application/json":
            raise MalformedRequest("the body is sent as application/json but is not JSON") from None
        raise MalformedRequest("the payload is not JSON") from None
    _check_parsed(body)
    return body


def _check_parsed(body: Any) -> None:
    if not isinstance(body, dict):
        raise MalformedRequest(f"the payload is a JSON {type(body).__name__}, not an object")
    _check_shape(body)


def _check_shape(body: dict[str, Any]) -> None:
    kind = body.get("type")
    if kind is not None and not isinstance(kind, str):
        raise MalformedRequest("type is not text")
    if "command" in body:
        _need_text(body, "command", "user_id")
        _may_be_text(body, "text", "response_url", "trigger_id")
        _check_handles(body)
    elif kind in _INTERACTIONS_WITH_USER:
        user = body.get("user")
        if not isinstance(user, dict) or not _is_text(user.get("id")):
            raise MalformedRequest(f"a {kind} payload without a user")
        _may_be_text(body, "response_url", "trigger_id")
        _check_handles(body)
        if kind == "block_actions":
            _check_actions(body.get("actions"))
        if kind in ("view_submission", "view_closed"):
            _check_view(kind, body.get("view"))
    elif kind == "event_callback":
        event = body.get("event")
        if not isinstance(event, dict) or not _is_text(event.get("type")):
            raise MalformedRequest("an event_callback without an event")
        if event["type"] in _EVENTS_WITH_USER and not _is_text(event.get("user")):
            raise MalformedRequest(f"a {event['type']} event without a user")


def _check_actions(actions: Any) -> None:
    if not isinstance(actions, list) or not actions:
        raise MalformedRequest("a block_actions payload without actions")
    for action in actions:
        if not isinstance(action, dict) or not _is_text(action.get("action_id")):
            raise MalformedRequest("a block_actions payload with an action that has no action_id")
        _may_be_text(action, "value", "action_ts")


def _check_view(kind: str, view: Any) -> None:
    if not isinstance(view, dict):
        raise MalformedRequest(f"a {kind} payload without a view")
    if not _is_text(view.get("type")):  # Bolt reads view.type of every submission (KeyError)
        raise MalformedRequest(f"a {kind} payload whose view has no type")
    _may_be_text(view, "id", "callback_id", "private_metadata")
    state = view.get("state")
    values = state.get("values") if isinstance(state, dict) else state
    if values is None:
        return
    blocks = values.values() if isinstance(values, dict) else None
    if blocks is None or not all(
        isinstance(inputs, dict) and all(isinstance(i, dict) for i in inputs.values())
        for inputs in blocks
    ):
        raise MalformedRequest(f"a {kind} payload whose view.state is not Slack's shape")


def _check_handles(body: dict[str, Any]) -> None:
    # Slack's are about a hundred characters; ours ride in a dialog's private_metadata
    # (3,000 characters at most) and in queued answers.
    for key in ("response_url", "trigger_id"):
        if len(body.get(key) or "") > MAX_HANDLE:
            raise MalformedRequest(f"{key} is longer than {MAX_HANDLE} characters")
    if body.get("response_url") and not body["response_url"].startswith(("https://", "http://")):
        raise MalformedRequest("response_url is not a URL")  # answers to it would fail later


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _need_text(body: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if not _is_text(body.get(key)):
            raise MalformedRequest(f"{key} is missing or not text")


def _may_be_text(body: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if body.get(key) is not None and not isinstance(body[key], str):
            raise MalformedRequest(f"{key} is not text")
