"""A fake Slack Web API server for tests.

It speaks HTTP like https://slack.com/api/, so the real slack_sdk / Bolt code paths
(request encoding, auth header, error handling, retries) are exercised rather than a
mocked client::

    with FakeSlackApi() as slack:
        client = WebClient(token="xoxb-test", base_url=slack.base_url)
        client.chat_postMessage(channel="C1", text="hi")
        assert [c.args["text"] for c in slack.calls("chat.postMessage")] == ["hi"]

Besides recording calls it keeps the state a test wants to assert on: the messages as
they now read after updates (`messages()`), App Home views (`home_view()`). Faults
(`fail_next`) answer with HTTP 429/5xx the way Slack does, and are recorded apart
from the calls that got through (`failed_calls()`), so "delivered exactly once" is
`len(calls(method)) == 1` however many retries it took.

`response_url(name)` builds URLs that stand in for the `response_url` Slack gives
with slash commands and interactions; posts to them are recorded as calls whose
method is ``"response_url:/response/<name>"``. Like Slack's, a response_url lasts 30
minutes from when it was given (or first used): `advance(seconds)` moves the fake's
clock, after which a post to an expired one is answered HTTP 404 ``expired_url`` and
recorded in `failed_calls()`. A response_url takes at most 5 posts (Slack: "up to 5 times
within 30 minutes"); the sixth is answered HTTP 404 ``used_url``.

Stricter than a recorder, it refuses what Slack refuses: malformed message `metadata`
(an object with a string `event_type` and an object `event_payload`), and
conversations.history / replies show a message's metadata only when asked with
`include_all_metadata=true`. For realism a test may opt in to Slack's rate limit per
method and channel (`rate_limit`: chat.postMessage about one message a second per
channel; beyond it HTTP 429 with Retry-After), and to the answers that leave a client
unsure whether it posted (`store_then_fail`: the message is stored, then the request
times out, the connection drops, or Slack answers `fatal_error`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.parser
import email.policy
import json
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from .lifecycle import Startable

__all__ = ["Call", "FakeSlackApi", "Message"]

TEAM_ID = "T0NBENV01"
TEAM_NAME = "nbenv test"
TEAM_DOMAIN = "nbenv-test"
BOT_USER_ID = "U0NBENVBOT"
BOT_USER_NAME = "nbenv"
BOT_ID = "B0NBENVBOT"
APP_ID = "A0NBENVAPP"

RESPONSE_URL_PREFIX = "response_url:"
# Form-encoded requests carry structured arguments as JSON strings; decoding them
# lets tests assert on `args["blocks"]` the same way whatever the transport.
_JSON_ARGS = frozenset({"blocks", "attachments", "view", "metadata", "unfurls"})
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
RESPONSE_URL_LIFETIME_S = 30 * 60
RESPONSE_URL_MAX_USES = 5  # api.slack.com/interactivity/handling#message_responses
_TS_EPOCH = 1_700_000_000
# Slack's limits on what one message may carry (api.slack.com/reference/block-kit):
# beyond them chat.postMessage / chat.update answer msg_too_long or invalid_blocks.
MAX_MESSAGE_TEXT = 40_000
MAX_BLOCKS = 50
MAX_HOME_BLOCKS = 100  # blocks of a view: Home tab or modal (View.blocks_max_length)
MAX_VIEW_TITLE = 24  # a modal's title, submit and close labels (View.title_max_length)
MAX_TEXT_OBJECT = 3000
MAX_FIELD = 2000
MAX_FIELDS = 10
MAX_HEADER = 150
MAX_CONTEXT_ELEMENTS = 10
MAX_BUTTON_TEXT = 75
MAX_BUTTON_VALUE = 2000
MAX_ACTION_ELEMENTS = 25
_TS_STEP_US = 100

Payload = dict[str, Any]
Handler = Callable[[Payload], Payload]


@dataclass(frozen=True)
class Call:
    """One request the fake answered.

    `args` merges query string and body (JSON, form or multipart); `headers` has
    lower-cased names; `response` is the JSON sent back (None for response_url
    posts, which answer plain "ok"); `status` is the HTTP status.
    """

    method: str
    args: dict[str, Any]
    headers: dict[str, str]
    response: Payload | None = None
    status: int = 200

    @property
    def ok(self) -> bool:
        if self.response is None:
            return self.status == 200
        return bool(self.response.get("ok"))

    @property
    def token(self) -> str | None:
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip() or None
        token = self.args.get("token")
        return str(token) if token else None


@dataclass(frozen=True)
class Message:
    """A channel message as it reads now; `edits` counts the chat.update calls applied."""

    channel: str
    ts: str
    text: str
    thread_ts: str | None = None
    blocks: list[Any] | None = None
    attachments: list[Any] | None = None
    metadata: Payload | None = None
    user: str = BOT_USER_ID
    edits: int = 0

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts


@dataclass
class _Fault:
    remaining: int
    status: int
    retry_after: int | str | None
    method: str | None

    def matches(self, method: str) -> bool:
        if self.method is None:
            # Unqualified faults model Slack's API being down or rate limited, which
            # does not concern response_url posts (a different endpoint, no token).
            return not method.startswith(RESPONSE_URL_PREFIX)
        if self.method == "response_url":
            return method.startswith(RESPONSE_URL_PREFIX)
        return self.method == method


@dataclass
class _Refusal:
    """Answer METHOD (every method when None) HTTP 200 {"ok": false, "error": ERROR}, as
    Slack answers a revoked token or a missing scope, REMAINING more times (None: until
    `stop_refusing`)."""

    error: str
    method: str | None
    remaining: int | None

    def take(self, method: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True


@dataclass
class _RateLimit:
    """At most BURST calls of a method per channel at once, refilled at PER_SECOND (Slack's
    chat.postMessage: about one message a second per channel, short bursts tolerated)."""

    per_second: float
    burst: int
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # channel → (tokens, at)

    def take(self, channel: str, now: float) -> float | None:
        """None when a call may go through now; else the seconds until one may."""
        tokens, at = self.buckets.get(channel, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.per_second)
        if tokens >= 1.0:
            self.buckets[channel] = (tokens - 1.0, now)
            return None
        self.buckets[channel] = (tokens, now)
        return (1.0 - tokens) / self.per_second


# How a stored message's answer goes wrong (see FakeSlackApi.store_then_fail).
UNSURE_OUTCOMES = (
    "timeout",
    "drop",
    "fatal_error",
    "internal_error",
    "request_timeout",
    "http_500",
)


@dataclass
class _Unsure:
    method: str
    outcome: str
    remaining: int


class _NoAnswer:
    """The request was handled but gets no answer: the connection hangs up to HOLD_S
    seconds (a read time-out for a client that waits less), then closes."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s


# What Slack adds to a missing_scope answer.
_MISSING_SCOPE_DETAIL = {"needed": "chat:write", "provided": "commands"}
# Where Slack wants a conversation ID (C…, G…, D…): a #name is channel_not_found.
_CONVERSATION_ID = re.compile(r"[CGD][A-Z0-9]+")


@dataclass
class _State:
    calls: list[Call] = field(default_factory=list)
    failed: list[Call] = field(default_factory=list)
    messages: dict[str, Message] = field(default_factory=dict)
    views: dict[str, Payload] = field(default_factory=dict)
    home_views: dict[str, Payload] = field(default_factory=dict)
    faults: list[_Fault] = field(default_factory=list)
    absent_from: set[str] = field(default_factory=set)
    refusals: list[_Refusal] = field(default_factory=list)
    response_urls: dict[str, float] = field(default_factory=dict)  # path → given at
    response_url_uses: dict[str, int] = field(default_factory=dict)  # path → posts taken
    rate_limits: dict[str, _RateLimit] = field(default_factory=dict)  # by method
    unsure: list[_Unsure] = field(default_factory=list)


def _error(error: str, **extra: Any) -> Payload:
    return {"ok": False, "error": error, **extra}


def _missing(name: str) -> Payload:
    # The shape Slack uses when a required argument is absent.
    return _error(
        "invalid_arguments",
        response_metadata={"messages": [f"[ERROR] missing required field: {name}"]},
    )


class FakeSlackApi(Startable):
    """A local HTTP server answering Slack Web API methods, recording every request.

    `token`: when given, only that token is accepted (others get "invalid_auth");
    otherwise any token that looks like a Slack token (``xox…``) is.
    """

    HOLD_S = 5.0  # how long a `store_then_fail("timeout")` request is held unanswered

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token
        self._cond = threading.Condition(threading.RLock())
        self._state = _State()
        self._ts_counter = 0
        self._view_counter = 0
        self._clock_offset_s = 0.0
        self._users: dict[str, Payload] = {}
        self._overrides: dict[str, Payload | Handler] = {}
        self._socket_mode_url: Callable[[], str] | None = None
        self._server: ThreadingHTTPServer | None = None
        self._closing = threading.Event()  # releases requests held without an answer
        self._thread: threading.Thread | None = None
        self._handlers: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.getPermalink": self._chat_get_permalink,
            "conversations.history": self._conversations_history,
            "conversations.replies": self._conversations_replies,
            "users.info": self._users_info,
            "views.open": self._views_open,
            "views.push": self._views_open,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
        }

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        fake = self

        class _Handler(_RequestHandler):
            api = fake

        self._closing.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-slack-api",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._closing.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` without a trailing slash."""
        if self._server is None:
            raise RuntimeError("FakeSlackApi is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        """What WebClient(base_url=...) and SLACK_API_URL take; ends with "/"."""
        return f"{self.root_url}/api/"

    def response_url(self, name: str) -> str:
        """A response_url-style URL; posts to it are recorded as ``response_url:<path>``.

        It expires RESPONSE_URL_LIFETIME_S after it is first given (see `advance`)."""
        path = f"/response/{quote(name, safe='')}"
        with self._cond:
            self._state.response_urls.setdefault(path, self._now())
        return f"{self.root_url}{path}"

    def advance(self, seconds: float) -> None:
        """Let SECONDS pass for Slack (response_urls expire), not for anyone else."""
        with self._cond:
            self._clock_offset_s += seconds

    def _now(self) -> float:
        return time.monotonic() + self._clock_offset_s

    # -- test controls ----------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 429,
        retry_after: int | str | None = 1,
        *,
        method: str | None = None,
    ) -> None:
        """Answer the next `n` API calls (of `method`, if given) with HTTP `status`.

        429 carries ``Retry-After: retry_after`` and {"ok": false, "error": "ratelimited"}
        as Slack sends it (a string is sent as it is, to try what Slack never sends).
        `method="response_url"` targets response_url posts, which unqualified faults leave
        alone.
        """
        if n < 1:
            raise ValueError("n must be at least 1")
        with self._cond:
            self._state.faults.append(
                _Fault(
                    remaining=n,
                    status=status,
                    retry_after=retry_after if status == 429 else None,
                    method=method,
                )
            )

    def override(self, method: str, response: Payload | Handler | None) -> None:
        """Answer `method` with a fixed payload or `response(args)`; None restores the default."""
        with self._cond:
            if response is None:
                self._overrides.pop(method, None)
            else:
                self._overrides[method] = response

    def serve_socket_mode(self, new_url: Callable[[], str] | None) -> None:
        """apps.connections.open answers {"ok": true, "url": NEW_URL()} (a Socket Mode
        server, tests/support/socket_mode.py); None: no Socket Mode here."""
        with self._cond:
            self._socket_mode_url = new_url

    def add_user(
        self, user_id: str, name: str, real_name: str | None = None, **profile: Any
    ) -> None:
        """Register a user for users.info (well-formed unknown IDs get a made-up user)."""
        real = real_name or name
        with self._cond:
            self._users[user_id] = _user_payload(
                user_id, name, real, {"real_name": real, "display_name": name, **profile}
            )

    def refuse(self, error: str, *, method: str | None = None, times: int | None = None) -> None:
        """Answer METHOD (every Web API method when None) with Slack's HTTP 200
        {"ok": false, "error": ERROR} — `token_revoked`, `missing_scope`,
        `restricted_action`… — TIMES times, or until `stop_refusing()` when None."""
        with self._cond:
            self._state.refusals.append(_Refusal(error, method, times))

    def stop_refusing(self) -> None:
        """The token or scope was fixed: methods answer as usual again."""
        with self._cond:
            self._state.refusals.clear()

    def rate_limit(
        self, method: str = "chat.postMessage", *, per_second: float = 1.0, burst: int = 1
    ) -> None:
        """Opt in to Slack's rate limit of METHOD per channel, for realism: BURST calls at
        once, then PER_SECOND; a call beyond it is answered HTTP 429 ``ratelimited`` with
        Retry-After (whole seconds, at least 1) and changes nothing. See
        api.slack.com/apis/rate-limits ("chat.postMessage generally allows posting one
        message per second per channel")."""
        if per_second <= 0 or burst < 1:
            raise ValueError("per_second must be positive and burst at least 1")
        with self._cond:
            self._state.rate_limits[method] = _RateLimit(per_second, burst)

    def stop_rate_limits(self) -> None:
        with self._cond:
            self._state.rate_limits.clear()

    def store_then_fail(
        self, outcome: str = "timeout", *, method: str = "chat.postMessage", times: int = 1
    ) -> None:
        """The next TIMES calls of METHOD that Slack would accept are carried out (the
        message is stored) and then answered as if they might not have been:
        ``timeout`` holds the connection without an answer (a read time-out for any client
        that waits less than HOLD_S, 5 s), ``drop`` closes it without an answer (a
        connection reset), ``fatal_error`` / ``internal_error`` / ``request_timeout``
        answer HTTP 200 with that error (Slack, of fatal_error: "It's possible some aspect
        of the operation succeeded"), ``http_500`` answers HTTP 500. The call is recorded
        in `failed_calls()` (status 0 when it got no answer), or in `calls()` when it was
        answered HTTP 200."""
        if outcome not in UNSURE_OUTCOMES:
            raise ValueError(f"outcome must be one of {UNSURE_OUTCOMES}")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._cond:
            self._state.unsure.append(_Unsure(method, outcome, times))

    def keep_bot_out_of(self, channel: str) -> None:
        """Posts and updates in CHANNEL answer not_in_channel until `invite_bot(channel)`
        (a private channel the bot was not invited to)."""
        with self._cond:
            self._state.absent_from.add(channel)

    def invite_bot(self, channel: str) -> None:
        with self._cond:
            self._state.absent_from.discard(channel)

    def reset(self) -> None:
        """Forget calls, messages, views and pending faults; ts keep increasing."""
        with self._cond:
            self._state = _State()

    # -- inspection -------------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[Call]:
        """Requests answered with HTTP 200 (including ok=false answers), in arrival order."""
        with self._cond:
            return [c for c in self._state.calls if method is None or c.method == method]

    def failed_calls(self, method: str | None = None) -> list[Call]:
        """Requests answered with an HTTP error status (injected faults, bad payloads)."""
        with self._cond:
            return [c for c in self._state.failed if method is None or c.method == method]

    def wait_for(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Call]:
        """Block until at least `count` calls of `method` were answered; return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [c for c in self._state.calls if c.method == method]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [c.method for c in self._state.calls]
                    raise TimeoutError(
                        f"{len(found)}/{count} {method} calls after {timeout}s; saw {seen}"
                    )
                self._cond.wait(left)

    def messages(self, channel: str | None = None) -> dict[str, Message]:
        """Messages as they read now (updates applied, deletions removed), by ts in order."""
        with self._cond:
            return {
                ts: m
                for ts, m in self._state.messages.items()
                if channel is None or m.channel == channel
            }

    def thread(self, channel: str, ts: str) -> list[Message]:
        """The root message `ts` followed by its replies, oldest first."""
        with self._cond:
            return [
                m
                for m in self._state.messages.values()
                if m.channel == channel and (m.ts == ts or m.thread_ts == ts)
            ]

    def home_view(self, user_id: str) -> Payload | None:
        """The App Home view last published for `user_id`."""
        with self._cond:
            view = self._state.home_views.get(user_id)
            return json.loads(json.dumps(view)) if view is not None else None

    # -- request handling (called from server threads) --------------------------------

    def _take_fault(self, method: str) -> _Fault | None:
        for fault in self._state.faults:
            if fault.remaining > 0 and fault.matches(method):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._state.faults.remove(fault)
                return fault
        return None

    def _handle(
        self, method: str, args: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], Payload | str | _NoAnswer]:
        """Returns (HTTP status, extra headers, JSON payload or plain text body, or no
        answer at all)."""
        with self._cond:
            fault = self._take_fault(method)
            if fault is not None:
                return self._answer_fault(fault, method, args, headers)
            if method.startswith(RESPONSE_URL_PREFIX):
                path = method[len(RESPONSE_URL_PREFIX) :]
                given = self._state.response_urls.setdefault(path, self._now())
                if self._now() - given > RESPONSE_URL_LIFETIME_S:
                    self._state.failed.append(Call(method, args, headers, None, 404))
                    return 404, {}, "expired_url"
                problem = message_problem(args)
                if problem:  # Slack answers a response_url post it cannot show with a 400
                    self._state.failed.append(Call(method, args, headers, None, 400))
                    return 400, {}, problem
                uses = self._state.response_url_uses.get(path, 0)
                if uses >= RESPONSE_URL_MAX_USES:
                    self._state.failed.append(Call(method, args, headers, None, 404))
                    return 404, {}, "used_url"
                self._state.response_url_uses[path] = uses + 1
                self._record(Call(method, args, headers, None, 200))
                return 200, {}, "ok"
            wait_s = self._rate_limited(method, args)
            if wait_s is not None:
                retry_after = str(max(1, math.ceil(wait_s)))
                payload = _error("ratelimited")
                self._state.failed.append(Call(method, args, headers, payload, 429))
                return 429, {"Retry-After": retry_after}, payload
            payload = self._api_payload(method, args, headers)
            unsure = self._take_unsure(method) if payload.get("ok") else None
            if unsure is None:
                self._record(Call(method, args, headers, payload, 200))
                return 200, {}, payload
            return self._answer_unsure(unsure, Call(method, args, headers, payload, 200))

    def _rate_limited(self, method: str, args: dict[str, Any]) -> float | None:
        limit = self._state.rate_limits.get(method)
        if limit is None:
            return None
        return limit.take(str(args.get("channel") or ""), self._now())

    def _take_unsure(self, method: str) -> _Unsure | None:
        for unsure in self._state.unsure:
            if unsure.method == method:
                unsure.remaining -= 1
                if unsure.remaining == 0:
                    self._state.unsure.remove(unsure)
                return unsure
        return None

    def _answer_unsure(
        self, unsure: _Unsure, call: Call
    ) -> tuple[int, dict[str, str], Payload | str | _NoAnswer]:
        """CALL was carried out; answer it as UNSURE says (see `store_then_fail`)."""
        if unsure.outcome in ("timeout", "drop"):
            self._state.failed.append(dataclasses.replace(call, response=None, status=0))
            self._cond.notify_all()
            return 0, {}, _NoAnswer(self.HOLD_S if unsure.outcome == "timeout" else 0.0)
        if unsure.outcome == "http_500":
            payload = _error("fatal_error")
            self._state.failed.append(dataclasses.replace(call, response=payload, status=500))
            self._cond.notify_all()
            return 500, {}, payload
        payload = _error(unsure.outcome)
        self._record(dataclasses.replace(call, response=payload))
        return 200, {}, payload

    def _answer_fault(
        self, fault: _Fault, method: str, args: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], Payload | str]:
        extra: dict[str, str] = {}
        if fault.status == 429:
            payload: Payload = _error("ratelimited")
            if fault.retry_after is not None:
                extra["Retry-After"] = str(fault.retry_after)
        elif fault.status >= 500:
            payload = _error("fatal_error")
        else:
            payload = _error("invalid_request")
        self._state.failed.append(Call(method, args, headers, payload, fault.status))
        return fault.status, extra, payload

    def _record_failed(self, call: Call) -> None:
        with self._cond:
            self._state.failed.append(call)

    def _record(self, call: Call) -> None:
        self._state.calls.append(call)
        self._cond.notify_all()

    def _api_payload(self, method: str, args: dict[str, Any], headers: dict[str, str]) -> Payload:
        token = Call(method, args, headers).token
        if token is None:
            return _error("not_authed")
        if method == "apps.connections.open":
            return self._apps_connections_open(token, args)
        if (self.token is not None and token != self.token) or not token.startswith("xox"):
            return _error("invalid_auth")
        for refusal in self._state.refusals:
            if refusal.take(method):
                if refusal.remaining == 0:
                    self._state.refusals.remove(refusal)
                extra = _MISSING_SCOPE_DETAIL if refusal.error == "missing_scope" else {}
                return _error(refusal.error, **extra)
        override = self._overrides.get(method)
        if override is not None:
            result = override(args) if callable(override) else override
            return json.loads(json.dumps(result))
        handler = self._handlers.get(method)
        if handler is None:
            return _error("unknown_method", req_method=method)
        return handler(args)

    # -- Slack methods ----------------------------------------------------------------

    def _next_ts(self) -> str:
        self._ts_counter += 1
        micros = self._ts_counter * _TS_STEP_US
        return f"{_TS_EPOCH + micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _auth_test(self, args: Payload) -> Payload:
        return {
            "ok": True,
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": TEAM_NAME,
            "user": BOT_USER_NAME,
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _apps_connections_open(self, token: str, args: Payload) -> Payload:
        """Socket Mode's WebSocket URL (docs.slack.dev/reference/methods/apps.connections.open):
        only for an app-level token (xapp-…), which must come in the Authorization header.
        Only `refuse(..., method="apps.connections.open")` applies: the others model the bot
        token."""
        for refusal in self._state.refusals:
            if refusal.method == "apps.connections.open" and refusal.take(refusal.method):
                if refusal.remaining == 0:
                    self._state.refusals.remove(refusal)
                return _error(refusal.error)
        if "token" in args:
            return _error("invalid_auth")  # "passing it as a POST parameter … an error"
        if not token.startswith("xapp-"):
            return _error("not_allowed_token_type")
        if self._socket_mode_url is None:
            return _error("unknown_method", req_method="apps.connections.open")
        return {"ok": True, "url": self._socket_mode_url()}

    def _message_payload(self, message: Message, *, with_metadata: bool = True) -> Payload:
        payload: Payload = {
            "type": "message",
            "user": message.user,
            "bot_id": BOT_ID,
            "app_id": APP_ID,
            "team": TEAM_ID,
            "text": message.text,
            "ts": message.ts,
            "bot_profile": {"id": BOT_ID, "app_id": APP_ID, "name": BOT_USER_NAME},
        }
        if message.blocks is not None:
            payload["blocks"] = message.blocks
        if message.attachments is not None:
            payload["attachments"] = message.attachments
        if message.metadata is not None and with_metadata:
            payload["metadata"] = message.metadata
        if message.thread_ts is not None:
            payload["thread_ts"] = message.thread_ts
            if message.is_reply:
                payload["parent_user_id"] = BOT_USER_ID
        if message.edits:
            payload["edited"] = {"user": BOT_USER_ID, "ts": message.ts}
        return payload

    def _chat_post_message(self, args: Payload) -> Payload:
        channel = args.get("channel")
        if not channel:
            return _error("channel_not_found")
        if not any(args.get(k) for k in ("text", "blocks", "attachments")):
            return _error("no_text")
        if channel in self._state.absent_from:
            return _error("not_in_channel")
        problem = message_problem(args) or metadata_problem(args)
        if problem:
            return _error(problem)
        thread_ts = args.get("thread_ts") or None
        message = Message(
            channel=str(channel),
            ts=self._next_ts(),
            text=str(args.get("text") or ""),
            thread_ts=str(thread_ts) if thread_ts else None,
            blocks=args.get("blocks"),
            attachments=args.get("attachments"),
            metadata=args.get("metadata"),
        )
        self._state.messages[message.ts] = message
        return {
            "ok": True,
            "channel": message.channel,
            "ts": message.ts,
            "message": self._message_payload(message),
        }

    def _find_message(self, channel: Any, ts: Any) -> Message | None:
        message = self._state.messages.get(str(ts))
        if message is None or message.channel != channel:
            return None
        return message

    def _chat_update(self, args: Payload) -> Payload:
        for required in ("channel", "ts"):
            if not args.get(required):
                return _missing(required)
        message = self._find_message(args["channel"], args["ts"])
        if message is None:
            return _error("message_not_found")
        if not any(k in args for k in ("text", "blocks", "attachments")):
            return _error("no_text")
        if args["channel"] in self._state.absent_from:
            return _error("not_in_channel")
        problem = message_problem(args) or metadata_problem(args)
        if problem:
            return _error(problem)
        changes: Payload = {"edits": message.edits + 1}
        if "text" in args:
            changes["text"] = str(args["text"] or "")
        for key in ("blocks", "attachments", "metadata"):
            if key in args:
                changes[key] = args[key]
        updated = dataclasses.replace(message, **changes)
        self._state.messages[updated.ts] = updated
        return {
            "ok": True,
            "channel": updated.channel,
            "ts": updated.ts,
            "text": updated.text,
            "message": self._message_payload(updated),
        }

    def _chat_delete(self, args: Payload) -> Payload:
        message = self._find_message(args.get("channel"), args.get("ts"))
        if message is None:
            return _error("message_not_found")
        del self._state.messages[message.ts]
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def _chat_post_ephemeral(self, args: Payload) -> Payload:
        for required in ("channel", "user"):
            if not args.get(required):
                return _missing(required)
        if not any(args.get(k) for k in ("text", "blocks", "attachments")):
            return _error("no_text")
        problem = message_problem(args)
        if problem:
            return _error(problem)
        return {"ok": True, "message_ts": self._next_ts()}

    def _chat_get_permalink(self, args: Payload) -> Payload:
        message = self._find_message(args.get("channel"), args.get("message_ts"))
        if message is None:
            return _error("message_not_found")
        link = (
            f"https://{TEAM_DOMAIN}.slack.com/archives/{message.channel}/"
            f"p{message.ts.replace('.', '')}"
        )
        if message.is_reply:
            link += f"?thread_ts={message.thread_ts}&cid={message.channel}"
        return {"ok": True, "channel": message.channel, "permalink": link}

    def _conversations_history(self, args: Payload) -> Payload:
        channel = args.get("channel")
        if not channel:
            return _missing("channel")
        problem = self._readable_problem(channel)
        if problem:
            return _error(problem)
        metadata = _flag(args.get("include_all_metadata"))
        roots = [
            self._message_payload(m, with_metadata=metadata)
            for m in self._state.messages.values()
            if m.channel == channel and not m.is_reply
        ]
        # Slack lists history newest first.
        return {"ok": True, "messages": roots[::-1], "has_more": False}

    def _conversations_replies(self, args: Payload) -> Payload:
        for required in ("channel", "ts"):
            if not args.get(required):
                return _missing(required)
        problem = self._readable_problem(args["channel"])
        if problem:
            return _error(problem)
        root = self._find_message(args["channel"], args["ts"])
        if root is None:
            return _error("thread_not_found")
        root_ts = root.thread_ts or root.ts
        messages = self.thread(root.channel, root_ts)
        metadata = _flag(args.get("include_all_metadata"))
        return {
            "ok": True,
            "messages": [self._message_payload(m, with_metadata=metadata) for m in messages],
            "has_more": False,
        }

    def _readable_problem(self, channel: Any) -> str | None:
        """Reading a conversation needs its ID (a #name is channel_not_found) and the
        bot's membership (not_in_channel), as Slack's conversations.* methods do."""
        if not _CONVERSATION_ID.fullmatch(str(channel)):
            return "channel_not_found"
        if channel in self._state.absent_from:
            return "not_in_channel"
        return None

    def _users_info(self, args: Payload) -> Payload:
        user_id = str(args.get("user") or "")
        if not user_id:
            return _missing("user")
        user = self._users.get(user_id)
        if user is None:
            if not _USER_ID.match(user_id):
                return _error("user_not_found")
            name = user_id.lower()
            user = _user_payload(user_id, name, name, {"real_name": name, "display_name": name})
        return {"ok": True, "user": json.loads(json.dumps(user))}

    def _new_view(self, view: Payload, **extra: Any) -> Payload:
        self._view_counter += 1
        view_id = f"V{self._view_counter:010d}"
        return {
            "id": view_id,
            "team_id": TEAM_ID,
            "type": view.get("type", "modal"),
            "title": view.get("title"),
            "blocks": view.get("blocks", []),
            "close": view.get("close"),
            "submit": view.get("submit"),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "external_id": view.get("external_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{self._view_counter:08d}",
            "clear_on_close": bool(view.get("clear_on_close", False)),
            "notify_on_close": bool(view.get("notify_on_close", False)),
            "root_view_id": view_id,
            "previous_view_id": None,
            "app_id": APP_ID,
            "app_installed_team_id": TEAM_ID,
            "bot_id": BOT_ID,
            **extra,
        }

    def _views_open(self, args: Payload) -> Payload:
        for required in ("trigger_id", "view"):
            if not args.get(required):
                return _missing(required)
        problem = view_problem(args["view"])
        if problem:
            return problem
        view = self._new_view(args["view"])
        self._state.views[view["id"]] = view
        return {"ok": True, "view": view}

    def _views_update(self, args: Payload) -> Payload:
        if not args.get("view"):
            return _missing("view")
        current: Payload | None = None
        if args.get("view_id"):
            current = self._state.views.get(str(args["view_id"]))
        elif args.get("external_id"):
            current = next(
                (v for v in self._state.views.values() if v["external_id"] == args["external_id"]),
                None,
            )
        else:
            return _missing("view_id")
        if current is None:
            return _error("not_found")
        problem = view_problem(args["view"])
        if problem:
            return problem
        if args.get("hash") and args["hash"] != current["hash"]:
            return _error("hash_conflict")
        view = self._new_view(args["view"], id=current["id"], root_view_id=current["root_view_id"])
        self._state.views[view["id"]] = view
        return {"ok": True, "view": view}

    def _views_publish(self, args: Payload) -> Payload:
        for required in ("user_id", "view"):
            if not args.get(required):
                return _missing(required)
        problem = view_problem({**args["view"], "type": "home"})
        if problem:
            return problem
        user_id = str(args["user_id"])
        previous = self._state.home_views.get(user_id)
        if previous is not None and args.get("hash") and args["hash"] != previous["hash"]:
            return _error("hash_conflict")
        view = self._new_view({**args["view"], "type": "home"})
        self._state.views[view["id"]] = view
        self._state.home_views[user_id] = view
        return {"ok": True, "view": view}


def message_problem(args: Mapping[str, Any]) -> str | None:
    """Slack's error for a message over its limits (msg_too_long, invalid_blocks), or None."""
    text = args.get("text")
    if isinstance(text, str) and len(text) > MAX_MESSAGE_TEXT:
        return "msg_too_long"
    return blocks_problem(args.get("blocks"), MAX_BLOCKS)


# event_type: "a human readable alphanumeric string" (api.slack.com/reference/metadata).
_EVENT_TYPE = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_PAYLOAD_SCALARS = (str, int, float, bool)


def metadata_problem(args: Mapping[str, Any]) -> str | None:
    """Slack's error for malformed message `metadata` (api.slack.com/metadata/using,
    api.slack.com/reference/metadata): not a JSON object is invalid_metadata_format; an
    object without a string `event_type` and an object `event_payload` (whose values are
    strings, numbers, booleans, objects of those, or arrays of such objects) is
    invalid_metadata_schema. None when there is none or it is well formed."""
    if "metadata" not in args:
        return None
    metadata = args["metadata"]
    if not isinstance(metadata, dict):
        return "invalid_metadata_format"
    event_type = metadata.get("event_type")
    payload = metadata.get("event_payload")
    if not isinstance(event_type, str) or not _EVENT_TYPE.fullmatch(event_type):
        return "invalid_metadata_schema"
    if not isinstance(payload, dict) or not all(
        isinstance(key, str) and _payload_value_fits(value) for key, value in payload.items()
    ):
        return "invalid_metadata_schema"
    return None


def _payload_value_fits(value: Any) -> bool:
    if isinstance(value, _PAYLOAD_SCALARS):
        return True
    if isinstance(value, dict):
        return all(isinstance(v, _PAYLOAD_SCALARS) for v in value.values())
    if isinstance(value, list):
        return all(
            isinstance(item, dict) and all(isinstance(v, _PAYLOAD_SCALARS) for v in item.values())
            for item in value
        )
    return False


def _flag(value: Any) -> bool:
    """A boolean argument as Slack reads it from JSON or a form field."""
    return value is True or str(value).lower() in ("true", "1")


def view_problem(view: Any) -> Payload | None:
    """Slack's answer to views.open / push / update / publish of a view it would refuse
    (api.slack.com/reference/surfaces/views: at most 100 blocks, a title of at most 24
    characters), judged by slack_sdk's own View and Block validators; None if it is valid."""
    if not isinstance(view, dict):
        return _invalid_view("view is not an object")
    blocks = view.get("blocks")
    if blocks_problem(blocks, MAX_HOME_BLOCKS):
        count = len(blocks) if isinstance(blocks, list) else "?"
        return _invalid_view(f"invalid blocks ({count} blocks, at most {MAX_HOME_BLOCKS})")
    for label in ("title", "submit", "close"):
        text = view.get(label)
        if text is not None and not _text_fits(text, MAX_VIEW_TITLE):
            return _invalid_view(f"{label} must be at most {MAX_VIEW_TITLE} characters")
    try:
        View(**view).to_dict()  # the view and every block and element in it
    except (SlackObjectFormationError, TypeError, KeyError, AttributeError) as error:
        return _invalid_view(str(error))
    return None


def _invalid_view(message: str) -> Payload:
    # Slack's shape for a view it refuses: invalid_arguments with the reason in
    # response_metadata (the view is not shown).
    return _error("invalid_arguments", response_metadata={"messages": [f"[ERROR] {message}"]})


def blocks_problem(blocks: Any, max_blocks: int) -> str | None:
    """invalid_blocks if Slack would refuse BLOCKS: over MAX_BLOCKS, over a text limit, or
    failing slack_sdk's own Block Kit validators; None when they are valid."""
    if blocks is None:
        return None
    if isinstance(blocks, str) or not isinstance(blocks, list) or len(blocks) > max_blocks:
        return "invalid_blocks"
    for block in blocks:
        if not isinstance(block, dict) or not _block_fits(block):
            return "invalid_blocks"
        try:
            parsed = Block.parse(block)
            if parsed is None:  # a type slack_sdk does not know: Slack does not either
                return "invalid_blocks"
            parsed.to_dict()  # validates the block and, unlike validate_json, its elements
        except (SlackObjectFormationError, TypeError, KeyError, AttributeError):
            return "invalid_blocks"
    return None


def _text_fits(text: Any, limit: int) -> bool:
    return (
        isinstance(text, dict)
        and isinstance(text.get("text"), str)
        and (len(text["text"]) <= limit)
    )


def _block_fits(block: dict[str, Any]) -> bool:
    kind = block.get("type")
    if kind == "section":
        fields = block.get("fields") or []
        if "text" in block and not _text_fits(block["text"], MAX_TEXT_OBJECT):
            return False
        return len(fields) <= MAX_FIELDS and all(_text_fits(f, MAX_FIELD) for f in fields)
    if kind == "header":
        return _text_fits(block.get("text"), MAX_HEADER)
    if kind == "context":
        elements = block.get("elements") or []
        return 0 < len(elements) <= MAX_CONTEXT_ELEMENTS and all(
            element.get("type") == "image" or _text_fits(element, MAX_TEXT_OBJECT)
            for element in elements
        )
    if kind == "actions":
        elements = block.get("elements") or []
        return 0 < len(elements) <= MAX_ACTION_ELEMENTS and all(
            element.get("type") != "button"
            or (
                _text_fits(element.get("text"), MAX_BUTTON_TEXT)
                and len(str(element.get("value") or "")) <= MAX_BUTTON_VALUE
            )
            for element in elements
        )
    return True


def _user_payload(user_id: str, name: str, real_name: str, profile: Mapping[str, Any]) -> Payload:
    return {
        "id": user_id,
        "team_id": TEAM_ID,
        "name": name,
        "deleted": False,
        "real_name": real_name,
        "tz": "Europe/London",
        "tz_label": "Greenwich Mean Time",
        "tz_offset": 0,
        "profile": dict(profile),
        "is_admin": False,
        "is_owner": False,
        "is_bot": False,
        "is_app_user": False,
        "updated": _TS_EPOCH,
    }


def _parse_body(content_type: str, body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/json":
        parsed = json.loads(body.decode("utf-8"))
        if not isinstance(parsed, dict):
            raise ValueError("JSON body is not an object")
        return parsed
    if kind == "multipart/form-data":
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body
        )
        fields: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not name:
                continue
            data = part.get_payload(decode=True) or b""
            is_file = part.get_filename() is not None
            fields[str(name)] = data if is_file else data.decode("utf-8")
        return fields
    # Slack treats anything else as form-encoded, as slack_sdk sends by default.
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))


def _decode_json_args(args: dict[str, Any]) -> dict[str, Any]:
    for key in _JSON_ARGS & args.keys():
        value = args[key]
        if isinstance(value, str) and value[:1] in ("[", "{"):
            # Undecodable JSON stays as sent, so the test sees what the client did.
            with contextlib.suppress(json.JSONDecodeError):
                args[key] = json.loads(value)
    return args


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 overflows when a test fires many concurrent requests,
    # and the kernel then delays the extra connections by a full second (SYN retry).
    request_queue_size = 128


class _RequestHandler(BaseHTTPRequestHandler):
    api: FakeSlackApi
    server_version = "FakeSlackApi/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}

        if parts.path.startswith("/api/"):
            method = unquote(parts.path[len("/api/") :])
        elif parts.path.startswith("/response/"):
            method = f"{RESPONSE_URL_PREFIX}{parts.path}"
        else:
            self._send(404, {}, "not found")
            return

        try:
            args: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
            args.update(_parse_body(headers.get("content-type", ""), body))
        except (ValueError, UnicodeDecodeError):
            raw = {"_raw": body.decode("utf-8", "replace")}
            self.api._record_failed(Call(method, raw, headers, None, 400))
            self._send(400, {}, "invalid_payload")
            return
        status, extra, payload = self.api._handle(method, _decode_json_args(args), headers)
        if isinstance(payload, _NoAnswer):
            # Carried out, never answered: the client times out or sees the connection go.
            self.api._closing.wait(payload.hold_s)
            self.close_connection = True
            return
        self._send(status, extra, payload)

    def _send(self, status: int, extra: dict[str, str], payload: Payload | str) -> None:
        if isinstance(payload, str):
            data, content_type = payload.encode("utf-8"), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json; charset=utf-8"
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        self.send_response(status, phrase)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
